//! The subcommands of the `ferroconv` binary, and what they share.

pub mod bench;
pub mod check;
pub mod demo;
pub mod info;

use std::process::ExitCode;
use std::str::FromStr;

use ferroconv::Device;

/// What a subcommand returns: its exit status, or an error that stops it
/// (printed by `main`, exit status [`EXIT_USAGE`]).
pub type Outcome = Result<ExitCode, Box<dyn std::error::Error>>;

/// The exit status of a command that could not run (bad arguments, no such device).
pub const EXIT_USAGE: u8 = 2;

/// A `--device` argument: `auto` (the dispatcher's choice) or a device (`cpu`,
/// `cuda`, `cuda:N`, or `emu`: the CUDA kernels on the host emulator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    Auto,
    Device(Device),
}

impl FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceArg::Auto),
            _ => s
                .parse()
                .map(DeviceArg::Device)
                .map_err(|_| format!("expected auto, cpu, cuda, cuda:N or emu, got {s:?}")),
        }
    }
}

impl DeviceArg {
    /// The device to run on: for `auto`, [`Device::best`]; a named device must be usable now.
    pub fn resolve(self) -> ferroconv::Result<Device> {
        match self {
            DeviceArg::Auto => Ok(Device::best()),
            DeviceArg::Device(device) => device.ensure_available().map(|()| device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_arguments_parse() {
        assert_eq!("auto".parse(), Ok(DeviceArg::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceArg::Device(Device::Cpu)));
        assert_eq!("cuda:2".parse(), Ok(DeviceArg::Device(Device::Cuda(2))));
        assert_eq!("emu".parse(), Ok(DeviceArg::Device(Device::Emu)));
        assert!("gpu".parse::<DeviceArg>().is_err());
    }

    #[test]
    fn cpu_resolves_and_emu_explains_itself() {
        assert_eq!(DeviceArg::Device(Device::Cpu).resolve(), Ok(Device::Cpu));
        let emu = DeviceArg::Device(Device::Emu).resolve();
        if cfg!(feature = "emu") {
            assert_eq!(emu, Ok(Device::Emu));
        } else {
            assert!(emu.unwrap_err().to_string().contains("`emu` feature"));
        }
    }
}
