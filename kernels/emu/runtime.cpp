// The emulator's runtime: guard-paged buffers, and launches that run each CUDA thread of a block
// as a fiber (makecontext, then sigsetjmp/siglongjmp) switching only at __syncthreads and warp collectives.
//
// A launch hands its blocks out to `os_threads` OS threads (the caller is one of them); each runs
// whole blocks with a BlockRunner (fiber stacks, dynamic shared memory) borrowed from a pool, so
// stacks are mapped once and reused. Between two barriers the ready fibers run one after another,
// each until it reaches the next barrier, in an order drawn from the launch's seed: a missing
// barrier then shows up as a wrong, seed-dependent result. Kernel bugs that hang or go unnoticed
// on a GPU are reported instead: a thread that returns while others wait at a barrier, a warp
// collective some lanes never join. Out-of-bounds accesses hit guard pages; the SIGSEGV handler
// names the kernel, block and thread before the process dies.
//
// Switching: a fiber is entered the first time with setcontext (makecontext gave it its stack),
// and from then on the scheduler and the fibers jump to each other with sigsetjmp(.., 0) /
// siglongjmp, which, unlike swapcontext, make no system call to save the signal mask. glibc's
// fortified longjmp would mistake a jump to another stack for a bug, hence no _FORTIFY_SOURCE.
#undef _FORTIFY_SOURCE
#include "runtime.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "shim.h"

namespace ferro_emu {

__thread const Coordinates* current_coordinates = nullptr;

namespace {

constexpr unsigned int kMaxThreadsPerBlock = 1024;
constexpr unsigned int kMaxBlockDimZ = 64;
constexpr uint64_t kMaxGridDimX = 0x7FFFFFFF;
constexpr unsigned int kMaxGridDimYZ = 65535;
// Dynamic shared memory a launch gets without opting in (cudaFuncAttributeMaxDynamicSharedMemorySize).
constexpr size_t kMaxDynamicSharedBytes = 48 * 1024;
constexpr size_t kFiberStackBytes = 256 * 1024;  // virtual: pages are touched only as deep as a kernel goes
constexpr size_t kSignalStackBytes = 64 * 1024;
constexpr uint64_t kShufflePoison = ~uint64_t{0};  // what a lane reads from a lane that does not exist

size_t page_size() {
    static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return size;
}

size_t round_up(size_t value, size_t multiple) { return (value + multiple - 1) / multiple * multiple; }

// An anonymous mapping, unmapped on destruction.
class Mapping {
  public:
    Mapping() = default;
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping() { reset(); }

    // Maps `length` bytes with no access; false when the kernel refuses.
    bool map(size_t length) {
        reset();
        void* base = mmap(nullptr, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base == MAP_FAILED) return false;
        base_ = static_cast<char*>(base);
        length_ = length;
        return true;
    }
    bool allow(size_t offset, size_t length) {
        return length == 0 || mprotect(base_ + offset, length, PROT_READ | PROT_WRITE) == 0;
    }
    void reset() {
        if (base_) munmap(base_, length_);
        base_ = nullptr;
        length_ = 0;
    }
    char* base() const { return base_; }

  private:
    char* base_ = nullptr;
    size_t length_ = 0;
};

// SplitMix64: small, fast, and good enough to draw orders from a seed.
class Rng {
  public:
    explicit Rng(uint64_t seed) : state_(seed) {}
    uint64_t next() {
        uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    uint64_t below(uint64_t bound) { return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * bound) >> 64); }

  private:
    uint64_t state_;
};

enum class Order { forward, reverse, random };

const char* order_name(Order order) {
    switch (order) {
        case Order::forward: return "forward";
        case Order::reverse: return "reverse";
        case Order::random: return "random";
    }
    return "?";
}

// The order blocks are handed out in: a bijection of [0, count), the identity, its mirror, or an
// affine map i -> (a*i + b) mod count with a coprime to count.
class BlockOrder {
  public:
    BlockOrder(Order order, uint64_t count, Rng& rng) : order_(order), count_(count) {
        if (order != Order::random || count < 2) return;
        do {
            multiplier_ = 1 + rng.below(count - 1);
        } while (gcd(multiplier_, count) != 1);
        offset_ = rng.below(count);
    }
    uint64_t operator()(uint64_t i) const {
        switch (order_) {
            case Order::forward: return i;
            case Order::reverse: return count_ - 1 - i;
            case Order::random:
                return static_cast<uint64_t>((static_cast<unsigned __int128>(multiplier_) * i + offset_) % count_);
        }
        return i;
    }

  private:
    static uint64_t gcd(uint64_t a, uint64_t b) {
        while (b) {
            const uint64_t t = a % b;
            a = b;
            b = t;
        }
        return a;
    }
    Order order_;
    uint64_t count_;
    uint64_t multiplier_ = 1;
    uint64_t offset_ = 0;
};

std::string format_dim(const uint3& v) {
    return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}

// One launch, shared by the OS threads that run its blocks.
struct Launch {
    const ferro_emu_kernel* kernel;
    dim3 grid;
    dim3 block;
    size_t shared_bytes;
    const void* args;
    uint64_t seed;
    Order order;
    uint64_t block_count;
    uint32_t threads_per_block;

    std::atomic<uint64_t> next_block{0};
    std::atomic<bool> failed{false};
    std::mutex error_mutex;
    int error_code = FERRO_EMU_OK;
    std::string error_message;

    void fail(int code, std::string message) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (error_code == FERRO_EMU_OK) {
            error_code = code;
            error_message = std::move(message);
        }
        failed.store(true, std::memory_order_relaxed);
    }
};

enum class FiberState : uint8_t { ready, at_block_barrier, at_warp_collective, finished, failed };

struct Fiber {
    ucontext_t context;  // the first entry, into fiber_main
    sigjmp_buf jump;     // where it waits, once started
    bool started;
    Coordinates coordinates;
    FiberState state;
    // The warp collective this fiber waits at: its deposit, and its result once the warp meets.
    int shuffle_kind;
    int lane_arg;
    int width;
    uint64_t deposit;
    uint64_t result;
};

class BlockRunner;
__thread BlockRunner* current_runner = nullptr;

void fiber_main();

// Runs whole blocks on the calling OS thread. Owns the fiber stacks (each with a guard page
// below it) and the dynamic shared memory (with a guard page after it); both are reused across
// blocks and launches.
class BlockRunner {
  public:
    // Makes room for `threads` fibers and `shared_bytes` of dynamic shared memory.
    bool prepare(uint32_t threads, size_t shared_bytes) {
        const size_t page = page_size();
        if (threads > fiber_capacity_) {
            const size_t capacity = std::max<size_t>(64, round_up(threads, 64));
            const size_t slot = kFiberStackBytes + page;
            fiber_capacity_ = 0;
            fibers_.reset();
            if (!stacks_.map(capacity * slot)) return false;
            for (size_t i = 0; i < capacity; ++i) {
                if (!stacks_.allow(i * slot + page, kFiberStackBytes)) return false;
            }
            fibers_.reset(new (std::nothrow) Fiber[capacity]);
            if (!fibers_) return false;
            for (size_t i = 0; i < capacity; ++i) {
                if (!init_context(fibers_[i].context, stacks_.base() + i * slot + page)) return false;
            }
            fiber_capacity_ = capacity;
        }
        const size_t shared_pages = round_up(std::max<size_t>(shared_bytes, 1), page);
        if (shared_pages > shared_capacity_) {
            shared_capacity_ = 0;
            if (!shared_.map(shared_pages + page) || !shared_.allow(0, shared_pages)) return false;
            shared_capacity_ = shared_pages;
        }
        // 16-byte aligned, ending as close to the guard page as that alignment allows.
        shared_data_ = shared_.base() + shared_capacity_ - round_up(shared_bytes, 16);
        shared_bytes_ = shared_bytes;
        return true;
    }

    // Runs block `block_idx` of `launch` to completion; false (with launch.fail called) on a kernel error.
    bool run_block(Launch& launch, uint3 block_idx) {
        launch_ = &launch;
        const uint32_t n = launch.threads_per_block;
        const dim3 block = launch.block;
        for (uint32_t i = 0; i < n; ++i) {
            Fiber& f = fibers_[i];
            f.coordinates = Coordinates{uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)}, block_idx,
                                        launch.block, launch.grid};
            f.state = FiberState::ready;
            f.started = false;
            makecontext(&f.context, fiber_main, 0);
        }
        memset(shared_data_, 0xFF, shared_bytes_);
        block_idx_ = block_idx;
        barriers_passed_ = 0;
        Rng rng(launch.seed ^ (0xD1B54A32D192ED03ull * (1 + linear_block(block_idx))));

        std::vector<uint32_t>& ready = ready_;
        for (;;) {
            ready.clear();
            for (uint32_t i = 0; i < n; ++i) {
                if (fibers_[i].state == FiberState::ready) ready.push_back(i);
            }
            if (launch.order == Order::reverse) std::reverse(ready.begin(), ready.end());
            if (launch.order == Order::random) {
                for (size_t i = ready.size(); i > 1; --i) std::swap(ready[i - 1], ready[rng.below(i)]);
            }
            for (uint32_t i : ready) {
                resume(fibers_[i]);
                if (fibers_[i].state == FiberState::failed) return block_failed();
            }
            // Every fiber now waits at a barrier or has finished: see which barrier can open.
            const int warps = meet_warps();
            if (warps < 0) return block_failed();
            if (warps > 0) continue;
            uint32_t waiting = 0, finished = 0, a_waiter = 0, a_finisher = 0;
            for (uint32_t i = 0; i < n; ++i) {
                if (fibers_[i].state == FiberState::at_block_barrier) {
                    ++waiting;
                    a_waiter = i;
                } else {
                    ++finished;
                    a_finisher = i;
                }
            }
            if (waiting == 0) return true;
            if (finished > 0) {
                fail(FERRO_EMU_BARRIER_DIVERGENCE,
                     "thread " + format_dim(fibers_[a_finisher].coordinates.thread_idx) + " (and " +
                         std::to_string(finished - 1) + " more) returned while thread " +
                         format_dim(fibers_[a_waiter].coordinates.thread_idx) + " (and " + std::to_string(waiting - 1) +
                         " more) wait at __syncthreads number " + std::to_string(barriers_passed_ + 1) +
                         ": every thread of a block must reach the same barriers");
                return block_failed();
            }
            for (uint32_t i = 0; i < n; ++i) fibers_[i].state = FiberState::ready;
            ++barriers_passed_;
        }
    }

    // --- Called on the fibers' side ---
    Fiber& running() { return *running_; }
    const Launch& launch() const { return *launch_; }
    void* shared_data() const { return shared_data_; }

    // Suspends the running fiber until the scheduler resumes it.
    __attribute__((noinline)) void yield(FiberState state) {
        Fiber& f = *running_;
        f.state = state;
        if (sigsetjmp(f.jump, 0) == 0) siglongjmp(scheduler_, 1);
    }

    // Records why the block fails (a separate statement from `leave_failed`, so the message's
    // temporaries are destroyed before the fiber is abandoned).
    void fail(int code, std::string message) {
        pending_code_ = code;
        pending_message_ = std::move(message);
    }

    // Marks the running fiber failed and leaves it for good.
    [[noreturn]] void leave_failed() {
        running_->state = FiberState::failed;
        siglongjmp(scheduler_, 1);
    }

    // Back to the scheduler once the kernel body has returned.
    [[noreturn]] void finish_running() {
        running_->state = FiberState::finished;
        siglongjmp(scheduler_, 1);
    }

    const Fiber* running_or_null() const { return running_; }

  private:
    // getcontext once per slot; makecontext re-targets the context at each block. (A function of
    // its own: getcontext "returns twice", which would pin the caller's locals.)
    __attribute__((noinline)) static bool init_context(ucontext_t& context, char* stack) {
        if (getcontext(&context) != 0) return false;
        context.uc_stack.ss_sp = stack;
        context.uc_stack.ss_size = kFiberStackBytes;
        context.uc_link = nullptr;
        return true;
    }

    uint64_t linear_block(uint3 b) const {
        const Launch& l = *launch_;
        return (static_cast<uint64_t>(b.z) * l.grid.y + b.y) * l.grid.x + b.x;
    }

    // Runs `f` until it waits at a barrier, finishes or fails.
    __attribute__((noinline)) void resume(Fiber& f) {
        running_ = &f;
        current_coordinates = &f.coordinates;
        if (sigsetjmp(scheduler_, 0) == 0) {
            if (f.started) siglongjmp(f.jump, 1);
            f.started = true;
            setcontext(&f.context);
        }
        running_ = nullptr;
        current_coordinates = nullptr;
    }

    bool block_failed() {
        launch_->fail(pending_code_, "block " + format_dim(block_idx_) + ": " + pending_message_);
        return false;
    }

    // Opens every warp collective all lanes of the warp have reached. Returns how many opened,
    // or -1 (after fail) when some lanes wait at one that other lanes can no longer reach.
    int meet_warps() {
        const uint32_t n = launch_->threads_per_block;
        int opened = 0;
        for (uint32_t first = 0; first < n; first += warpSize) {
            const uint32_t lanes = std::min<uint32_t>(warpSize, n - first);
            Fiber* warp = &fibers_[first];
            uint32_t arrived = 0, straggler = 0;
            for (uint32_t l = 0; l < lanes; ++l) {
                if (warp[l].state == FiberState::at_warp_collective) {
                    ++arrived;
                } else {
                    straggler = l;
                }
            }
            if (arrived == 0) continue;
            if (arrived < lanes) {
                const bool returned = warp[straggler].state == FiberState::finished;
                fail(FERRO_EMU_WARP_COLLECTIVE,
                     std::to_string(arrived) + " lanes of warp " + std::to_string(first / warpSize) +
                         " wait at a warp collective (__shfl*_sync with a full mask) while lane " +
                         std::to_string(straggler) + (returned ? " has returned" : " waits at __syncthreads"));
                return -1;
            }
            for (uint32_t l = 0; l < lanes; ++l) {
                const int src = source_lane(warp[l], static_cast<int>(l));
                warp[l].result = src >= 0 && src < static_cast<int>(lanes) ? warp[src].deposit : kShufflePoison;
            }
            for (uint32_t l = 0; l < lanes; ++l) warp[l].state = FiberState::ready;
            ++opened;
        }
        return opened;
    }

    // The lane a shuffle reads from, as the PTX ISA defines shfl.sync's modes (width a power of two).
    static int source_lane(const Fiber& f, int lane) {
        const int width = f.width;
        const int segment = lane & ~(width - 1);
        switch (f.shuffle_kind) {
            case shuffle_index: return segment | (f.lane_arg & (width - 1));
            case shuffle_down: {
                const int delta = f.lane_arg;  // an unsigned delta of 2^31 or more arrives negative
                return delta >= 0 && delta < width - (lane - segment) ? lane + delta : lane;
            }
            case shuffle_xor: {
                const int src = lane ^ f.lane_arg;
                return src >= 0 && src < segment + width ? src : lane;  // later groups: own value
            }
        }
        return lane;
    }

    sigjmp_buf scheduler_;  // where the scheduler waits while a fiber runs
    Fiber* running_ = nullptr;
    Launch* launch_ = nullptr;
    uint3 block_idx_{0, 0, 0};
    uint64_t barriers_passed_ = 0;
    std::vector<uint32_t> ready_;
    int pending_code_ = FERRO_EMU_OK;
    std::string pending_message_;

    Mapping stacks_;
    std::unique_ptr<Fiber[]> fibers_;
    size_t fiber_capacity_ = 0;
    Mapping shared_;
    size_t shared_capacity_ = 0;
    char* shared_data_ = nullptr;
    size_t shared_bytes_ = 0;
};

void fiber_main() {
    BlockRunner* runner = current_runner;
    const Launch& launch = runner->launch();
    launch.kernel->entry(launch.args);
    current_runner->finish_running();
}

// BlockRunners are kept for the next launch, so each OS thread of a launch maps stacks at most once.
class RunnerPool {
  public:
    std::unique_ptr<BlockRunner> take() {
        std::lock_guard<std::mutex> lock(mutex_);
        if (idle_.empty()) return std::unique_ptr<BlockRunner>(new (std::nothrow) BlockRunner);
        std::unique_ptr<BlockRunner> runner = std::move(idle_.back());
        idle_.pop_back();
        return runner;
    }
    void give_back(std::unique_ptr<BlockRunner> runner) {
        std::lock_guard<std::mutex> lock(mutex_);
        idle_.push_back(std::move(runner));
    }

  private:
    std::mutex mutex_;
    std::vector<std::unique_ptr<BlockRunner>> idle_;
};

RunnerPool& runner_pool() {
    static RunnerPool* pool = new RunnerPool;  // never destroyed: launches may outlive static destructors
    return *pool;
}

// ---- Out-of-bounds diagnostics -------------------------------------------------------------
// On SIGSEGV/SIGBUS inside a kernel, say where (async-signal-safe: write(2) only), then put the
// previous handler back and return: the access faults again and the previous action runs.
struct sigaction previous_segv, previous_bus;

void append(char*& out, const char* end, const char* text) {
    while (*text && out < end) *out++ = *text++;
}

void append_number(char*& out, const char* end, uint64_t value, int base) {
    char digits[24];
    int count = 0;
    do {
        digits[count++] = "0123456789abcdef"[value % base];
        value /= base;
    } while (value);
    while (count && out < end) *out++ = digits[--count];
}

void append_coordinates(char*& out, const char* end, const uint3& v) {
    append(out, end, "(");
    append_number(out, end, v.x, 10);
    append(out, end, ",");
    append_number(out, end, v.y, 10);
    append(out, end, ",");
    append_number(out, end, v.z, 10);
    append(out, end, ")");
}

void on_fault(int signal, siginfo_t* info, void*) {
    char message[512];
    char* out = message;
    const char* end = message + sizeof message;
    const BlockRunner* runner = current_runner;
    const Fiber* fiber = runner ? runner->running_or_null() : nullptr;
    if (fiber) {
        append(out, end, "ferroconv emulator: ");
        append(out, end, signal == SIGBUS ? "SIGBUS" : "SIGSEGV");
        append(out, end, " at address 0x");
        append_number(out, end, reinterpret_cast<uintptr_t>(info->si_addr), 16);
        append(out, end, " in kernel ");
        append(out, end, runner->launch().kernel->name);
        append(out, end, ", block ");
        append_coordinates(out, end, fiber->coordinates.block_idx);
        append(out, end, ", thread ");
        append_coordinates(out, end, fiber->coordinates.thread_idx);
        append(out, end, ": an out-of-bounds access hit a guard page (or a fiber's stack overflowed)\n");
        ssize_t ignored = write(STDERR_FILENO, message, static_cast<size_t>(out - message));
        (void)ignored;
    }
    sigaction(signal, signal == SIGBUS ? &previous_bus : &previous_segv, nullptr);
}

void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction action;
        memset(&action, 0, sizeof action);
        action.sa_sigaction = on_fault;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&action.sa_mask);
        sigaction(SIGSEGV, &action, &previous_segv);
        sigaction(SIGBUS, &action, &previous_bus);
    });
}

// Gives the calling OS thread an alternate signal stack while it runs blocks, unless it has one
// (Rust's threads do), so the fault handler runs even when a fiber's stack overflowed.
class SignalStack {
  public:
    SignalStack() {
        stack_t current;
        if (sigaltstack(nullptr, &current) != 0 || !(current.ss_flags & SS_DISABLE)) return;
        if (!memory_.map(kSignalStackBytes) || !memory_.allow(0, kSignalStackBytes)) return;
        stack_t mine;
        mine.ss_sp = memory_.base();
        mine.ss_size = kSignalStackBytes;
        mine.ss_flags = 0;
        installed_ = sigaltstack(&mine, nullptr) == 0;
    }
    ~SignalStack() {
        if (!installed_) return;
        stack_t off;
        memset(&off, 0, sizeof off);
        off.ss_flags = SS_DISABLE;
        sigaltstack(&off, nullptr);
    }

  private:
    Mapping memory_;
    bool installed_ = false;
};

// Runs blocks of `launch` until none are left or one failed.
void run_blocks(Launch& launch, const BlockOrder& order) {
    SignalStack signal_stack;
    std::unique_ptr<BlockRunner> runner = runner_pool().take();
    if (!runner || !runner->prepare(launch.threads_per_block, launch.shared_bytes)) {
        launch.fail(FERRO_EMU_RESOURCES, "could not map fiber stacks or shared memory");
        if (runner) runner_pool().give_back(std::move(runner));
        return;
    }
    current_runner = runner.get();
    const dim3 grid = launch.grid;
    while (!launch.failed.load(std::memory_order_relaxed)) {
        const uint64_t i = launch.next_block.fetch_add(1, std::memory_order_relaxed);
        if (i >= launch.block_count) break;
        const uint64_t b = order(i);
        const uint3 block_idx{static_cast<unsigned int>(b % grid.x), static_cast<unsigned int>((b / grid.x) % grid.y),
                              static_cast<unsigned int>(b / (static_cast<uint64_t>(grid.x) * grid.y))};
        if (!runner->run_block(launch, block_idx)) break;
    }
    current_runner = nullptr;
    runner_pool().give_back(std::move(runner));
}

std::string validate(const ferro_emu_kernel* kernel, const dim3& grid, const dim3& block, size_t shared_bytes,
                     const void* args) {
    if (!kernel || !kernel->entry) return "no kernel";
    if (!args) return "no argument struct";
    const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
    if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
        return "every grid and block dimension must be at least 1";
    }
    if (threads > kMaxThreadsPerBlock || block.z > kMaxBlockDimZ) {
        return "block " + format_dim(block) + " exceeds CUDA's limits (1024 threads, z <= 64)";
    }
    if (grid.x > kMaxGridDimX || grid.y > kMaxGridDimYZ || grid.z > kMaxGridDimYZ) {
        return "grid " + format_dim(grid) + " exceeds CUDA's limits (x < 2^31, y and z <= 65535)";
    }
    if (shared_bytes > kMaxDynamicSharedBytes) {
        return std::to_string(shared_bytes) + " bytes of dynamic shared memory exceed the " +
               std::to_string(kMaxDynamicSharedBytes) + " a launch gets without opting in";
    }
    return std::string();
}

void write_error(char* error, size_t error_len, const std::string& message) {
    if (!error || error_len == 0) return;
    const size_t n = std::min(message.size(), error_len - 1);
    memcpy(error, message.data(), n);
    error[n] = '\0';
}

}  // namespace

// ---- Called from kernel code through the shim ----------------------------------------------

void block_barrier() {
    BlockRunner* runner = current_runner;
    if (!runner || !runner->running_or_null()) {
        fputs("ferroconv emulator: __syncthreads called outside a kernel launch\n", stderr);
        abort();
    }
    runner->yield(FiberState::at_block_barrier);
}

uint64_t warp_shuffle(unsigned int mask, uint64_t bits, int kind, int lane_arg, int width) {
    BlockRunner* runner = current_runner;
    if (!runner || !runner->running_or_null()) {
        fputs("ferroconv emulator: a warp shuffle called outside a kernel launch\n", stderr);
        abort();
    }
    if (mask != 0xFFFFFFFFu) {
        runner->fail(FERRO_EMU_WARP_COLLECTIVE, "thread " + format_dim(threadIdx) + ": warp shuffle with mask " +
                                                    std::to_string(mask) + "; only the full mask is supported");
        runner->leave_failed();
    }
    if (width < 1 || width > warpSize || (width & (width - 1)) != 0) {
        runner->fail(FERRO_EMU_WARP_COLLECTIVE, "thread " + format_dim(threadIdx) + ": warp shuffle width " +
                                                    std::to_string(width) + " is not a power of two <= 32");
        runner->leave_failed();
    }
    Fiber& f = runner->running();
    f.shuffle_kind = kind;
    f.lane_arg = lane_arg;
    f.width = width;
    f.deposit = bits;
    runner->yield(FiberState::at_warp_collective);
    return runner->running().result;
}

void* dynamic_shared_memory() {
    BlockRunner* runner = current_runner;
    return runner ? runner->shared_data() : nullptr;
}

}  // namespace ferro_emu

using namespace ferro_emu;

extern "C" int ferro_emu_alloc(size_t bytes, size_t align, int guard_before, ferro_emu_allocation* out) {
    memset(out, 0, sizeof *out);
    const size_t page = page_size();
    if (align == 0 || (align & (align - 1)) != 0 || align > page) return FERRO_EMU_RESOURCES;
    if (bytes > SIZE_MAX - 3 * page) return FERRO_EMU_RESOURCES;
    const size_t data_pages = round_up(bytes, page);
    const size_t mapped = data_pages + 2 * page;
    void* base = mmap(nullptr, mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return FERRO_EMU_RESOURCES;
    char* first = static_cast<char*>(base) + page;
    if (data_pages && mprotect(first, data_pages, PROT_READ | PROT_WRITE) != 0) {
        munmap(base, mapped);
        return FERRO_EMU_RESOURCES;
    }
    char* data = guard_before ? first
                              : reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(first + data_pages - bytes) &
                                                        ~static_cast<uintptr_t>(align - 1));
    memset(data, 0xFF, bytes);
    out->data = data;
    out->base = base;
    out->mapped = mapped;
    return FERRO_EMU_OK;
}

extern "C" void ferro_emu_free(const ferro_emu_allocation* allocation) {
    if (allocation && allocation->base) munmap(allocation->base, allocation->mapped);
}

extern "C" int ferro_emu_launch(const ferro_emu_kernel* kernel, ferro_emu_dim3 grid_dim, ferro_emu_dim3 block_dim,
                                size_t shared_bytes, const void* args, uint64_t seed, uint32_t os_threads, char* error,
                                size_t error_len) {
    const dim3 grid(grid_dim.x, grid_dim.y, grid_dim.z);
    const dim3 block(block_dim.x, block_dim.y, block_dim.z);
    const std::string invalid = validate(kernel, grid, block, shared_bytes, args);
    if (!invalid.empty()) {
        write_error(error, error_len, invalid);
        return FERRO_EMU_INVALID_LAUNCH;
    }
    install_fault_handler();

    Launch launch;
    launch.kernel = kernel;
    launch.grid = grid;
    launch.block = block;
    launch.shared_bytes = shared_bytes;
    launch.args = args;
    launch.seed = seed;
    launch.order = static_cast<Order>(seed % 3);
    launch.block_count = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
    launch.threads_per_block = block.x * block.y * block.z;
    Rng rng(seed);
    const BlockOrder order(launch.order, launch.block_count, rng);

    const uint64_t helpers = std::min<uint64_t>(std::max<uint32_t>(os_threads, 1), launch.block_count) - 1;
    std::vector<std::thread> threads;
    try {
        threads.reserve(helpers);
        for (uint64_t i = 0; i < helpers; ++i) threads.emplace_back(run_blocks, std::ref(launch), std::cref(order));
    } catch (const std::exception&) {
        // Fewer helper threads than asked for: the blocks still all run, on those that started.
    }
    run_blocks(launch, order);
    for (std::thread& t : threads) t.join();

    if (launch.error_code != FERRO_EMU_OK) {
        write_error(error, error_len,
                    std::string(order_name(launch.order)) + " fiber order, " + launch.error_message);
    }
    return launch.error_code;
}

extern "C" uint16_t ferro_emu_f32_to_f16_bits(float value) { return f32_to_f16_bits(value); }
extern "C" float ferro_emu_f16_bits_to_f32(uint16_t bits) { return f16_bits_to_f32(bits); }
extern "C" uint16_t ferro_emu_f32_to_bf16_bits(float value) { return f32_to_bf16_bits(value); }
extern "C" float ferro_emu_bf16_bits_to_f32(uint16_t bits) { return bf16_bits_to_f32(bits); }
