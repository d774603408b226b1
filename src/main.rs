fn main() {
    println!("ferroconv {}", env!("CARGO_PKG_VERSION"));
}
