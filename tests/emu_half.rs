//! The shim's half-type conversions are bit-exact with the `half` crate: every f16/bf16 bit
//! pattern to f32, and f32 to f16/bf16 at every rounding tie, around every representable value,
//! at the specials (zeros, infinities, NaN payloads, overflow and underflow edges) and at a
//! million pseudo-random floats.
#![cfg(feature = "emu")]

use ferroconv::cuda::emu::selftest::{bf16_bits_to_f32, f16_bits_to_f32, f32_to_bf16_bits, f32_to_f16_bits};
use half::{bf16, f16};

#[test]
fn every_f16_converts_to_f32_exactly() {
    for bits in 0..=u16::MAX {
        let expected = f16::from_bits(bits).to_f32().to_bits();
        assert_eq!(f16_bits_to_f32(bits).to_bits(), expected, "f16 bits {bits:#06x}");
    }
}

#[test]
fn every_bf16_converts_to_f32_exactly() {
    for bits in 0..=u16::MAX {
        let expected = bf16::from_bits(bits).to_f32().to_bits();
        assert_eq!(bf16_bits_to_f32(bits).to_bits(), expected, "bf16 bits {bits:#06x}");
    }
}

/// f32 bit patterns that exercise rounding to a 16-bit format: for each of its values, the value,
/// its f32 neighbours, and the exact midpoint to the next value with its neighbours (the ties).
fn rounding_probes(to_f32: impl Fn(u16) -> f32) -> Vec<u32> {
    let mut probes = Vec::new();
    for bits in 0..=u16::MAX {
        let value = to_f32(bits);
        let next = to_f32(bits.wrapping_add(1));
        if !value.is_finite() || !next.is_finite() || value.to_bits() >> 31 != next.to_bits() >> 31 {
            continue;
        }
        let midpoint = ((f64::from(value) + f64::from(next)) / 2.0) as f32; // exact: f32 has 8+ more bits
        for centre in [value.to_bits(), midpoint.to_bits()] {
            probes.extend([centre.wrapping_sub(1), centre, centre.wrapping_add(1)]);
        }
    }
    probes
}

fn special_probes() -> Vec<u32> {
    let mut probes = vec![
        0.0f32.to_bits(),
        (-0.0f32).to_bits(),
        f32::INFINITY.to_bits(),
        f32::NEG_INFINITY.to_bits(),
        f32::MAX.to_bits(),
        f32::MIN.to_bits(),
        f32::MIN_POSITIVE.to_bits(),
        1, // smallest f32 subnormal
        0x007F_FFFF,
        65504.0f32.to_bits(), // largest f16
        65519.99f32.to_bits(),
        65520.0f32.to_bits(),       // the tie between 65504 and 65536: rounds to infinity
        2.0f32.powi(-24).to_bits(), // smallest f16 subnormal
        2.0f32.powi(-25).to_bits(), // half of it: ties to even, zero
        (2.0f32.powi(-25) * 1.5).to_bits(),
        2.0f32.powi(-26).to_bits(),
        2.0f32.powi(-14).to_bits(), // smallest normal f16
        0x7F7F_8000,                // the bf16 tie below infinity
    ];
    // NaNs: quiet and signalling, both signs, assorted payloads (kept in the top bits, made quiet).
    for payload in [1, 0x1FFF, 0x2000, 0x3F_FFFF, 0x40_0000, 0x40_0001, 0x7F_E000, 0x7F_FFFF, 0x15_5555] {
        probes.extend([0x7F80_0000 | payload, 0xFF80_0000 | payload]);
    }
    let with_negatives: Vec<u32> = probes.iter().map(|b| b ^ 0x8000_0000).collect();
    probes.extend(with_negatives);
    probes
}

fn pseudo_random_probes(count: usize) -> impl Iterator<Item = u32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..count).map(move |_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 32) as u32
    })
}

fn assert_same_rounding(
    name: &str,
    probes: impl IntoIterator<Item = u32>,
    shim: fn(f32) -> u16,
    crate_: fn(f32) -> u16,
) {
    let mut checked = 0usize;
    for bits in probes {
        let value = f32::from_bits(bits);
        assert_eq!(shim(value), crate_(value), "{name} of f32 bits {bits:#010x} ({value:e})");
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn f32_to_f16_rounds_like_the_half_crate() {
    let crate_ = |v: f32| f16::from_f32(v).to_bits();
    let probes = rounding_probes(|b| f16::from_bits(b).to_f32());
    assert!(probes.len() > 300_000, "ties and neighbours of every finite f16");
    assert_same_rounding("f16", probes, f32_to_f16_bits, crate_);
    assert_same_rounding("f16", special_probes(), f32_to_f16_bits, crate_);
    assert_same_rounding("f16", pseudo_random_probes(1_000_000), f32_to_f16_bits, crate_);
}

#[test]
fn f32_to_bf16_rounds_like_the_half_crate() {
    let crate_ = |v: f32| bf16::from_f32(v).to_bits();
    let probes = rounding_probes(|b| bf16::from_bits(b).to_f32());
    assert!(probes.len() > 300_000, "ties and neighbours of every finite bf16");
    assert_same_rounding("bf16", probes, f32_to_bf16_bits, crate_);
    assert_same_rounding("bf16", special_probes(), f32_to_bf16_bits, crate_);
    assert_same_rounding("bf16", pseudo_random_probes(1_000_000), f32_to_bf16_bits, crate_);
}

#[test]
fn ties_go_to_even() {
    // 1 + 2^-11 lies halfway between f16 1.0 (even) and 1 + 2^-10 (odd): it rounds down;
    // 1 + 3 * 2^-11 lies between 1 + 2^-10 (odd) and 1 + 2^-9 (even): it rounds up.
    assert_eq!(f32_to_f16_bits(1.0 + 2.0f32.powi(-11)), 0x3C00);
    assert_eq!(f32_to_f16_bits(1.0 + 3.0 * 2.0f32.powi(-11)), 0x3C02);
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F80_8000)), 0x3F80);
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F81_8000)), 0x3F82);
    assert_eq!(f32_to_f16_bits(65520.0), 0x7C00);
}
