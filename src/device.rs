//! Devices and the dispatcher's choice between them.

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Where a tensor lives and an op runs.
///
/// ```
/// use ferroconv::Device;
/// assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(1));
/// assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
/// assert_eq!(Device::Cuda(0).to_string(), "cuda:0");
/// assert_eq!("emu".parse::<Device>().unwrap(), Device::Emu);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// The host CPU, through the rayon backend.
    Cpu,
    /// The CUDA device of this ordinal.
    Cuda(usize),
    /// The CUDA backend's kernels on the host's kernel emulator (builds with the `emu` feature;
    /// for tests and `ferroconv check --device emu`, never chosen by [`Device::best`]).
    Emu,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Emu => f.write_str("emu"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;

    /// Parses `cpu`, `cuda` (ordinal 0), `cuda:N` or `emu`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument {
            what: "device",
            detail: format!("expected cpu, cuda, cuda:N or emu, got {s:?}"),
        };
        match s {
            "cpu" => Ok(Device::Cpu),
            "emu" => Ok(Device::Emu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Device::Cuda).ok_or_else(bad),
        }
    }
}

/// The dispatcher's choice of device, and why it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceChoice {
    /// The device ops run on by default.
    pub device: Device,
    /// Why: the override that set it, or why CUDA was or was not taken.
    pub reason: String,
}

/// The environment variable that overrides [`Device::best`]: `cpu`, `cuda` or `cuda:N`.
pub const DEVICE_ENV: &str = "FERROCONV_DEVICE";

impl Device {
    /// The best device here: CUDA when the driver loads and a device answers,
    /// otherwise the CPU. `FERROCONV_DEVICE` overrides it. Decided once.
    ///
    /// ```
    /// let device = ferroconv::Device::best();
    /// println!("running on {device} because {}", ferroconv::Device::choice().reason);
    /// ```
    pub fn best() -> Device {
        Device::choice().device
    }

    /// The device [`best`](Self::best) picked, with the reason (what `ferroconv info` shows).
    pub fn choice() -> &'static DeviceChoice {
        static CHOICE: OnceLock<DeviceChoice> = OnceLock::new();
        CHOICE.get_or_init(|| choose(std::env::var(DEVICE_ENV).ok().as_deref()))
    }

    /// Checks that this device can run ops now, with the reason when it cannot.
    pub fn ensure_available(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(ordinal) => crate::cuda::probe(ordinal)
                .map(|_| ())
                .map_err(|reason| Error::DeviceUnavailable { device: self.to_string(), reason }),
            Device::Emu if cfg!(feature = "emu") => Ok(()),
            Device::Emu => Err(emulator_not_built()),
        }
    }
}

/// Why [`Device::Emu`] cannot be used in a build without the `emu` feature.
pub(crate) fn emulator_not_built() -> Error {
    Error::DeviceUnavailable {
        device: Device::Emu.to_string(),
        reason: "this build lacks the `emu` feature, which the kernel emulator needs".into(),
    }
}

fn choose(env: Option<&str>) -> DeviceChoice {
    if let Some(requested) = env.filter(|s| !s.is_empty() && *s != "auto") {
        return match requested.parse::<Device>() {
            Ok(device) => match device.ensure_available() {
                Ok(()) => DeviceChoice { device, reason: format!("{DEVICE_ENV}={requested}") },
                Err(e) => DeviceChoice { device: Device::Cpu, reason: format!("{DEVICE_ENV}={requested}, but {e}") },
            },
            Err(e) => DeviceChoice { device: Device::Cpu, reason: format!("ignoring {DEVICE_ENV}: {e}") },
        };
    }
    match crate::cuda::probe(0) {
        Ok(name) => DeviceChoice { device: Device::Cuda(0), reason: format!("CUDA device 0 answers ({name})") },
        Err(why) => DeviceChoice { device: Device::Cpu, reason: format!("CUDA not used: {why}") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_to_cpu_is_honoured() {
        let c = choose(Some("cpu"));
        assert_eq!(c.device, Device::Cpu);
        assert!(c.reason.contains("FERROCONV_DEVICE=cpu"));
    }

    #[test]
    fn bad_override_falls_back_with_reason() {
        let c = choose(Some("tpu"));
        assert_eq!(c.device, Device::Cpu);
        assert!(c.reason.contains("tpu"));
    }
}
