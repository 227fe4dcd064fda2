//! Signals as images, users and the CRI name them, and the rule that picks a container's
//! graceful stop signal.
//!
//! `nix::sys::signal::Signal` parses the standard names but has no real-time signals and
//! none of the old aliases the CRI `Signal` enum carries, hence the code around it.

use crate::cri;
use crate::error::{Error, Result};

/// Parses a signal as images and users write it: `SIGUSR1`, `USR1` or `10`.
pub fn parse_signal(s: &str) -> Result<u32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(|sig| sig as u32)
            .map_err(|_| Error::invalid(format!("unknown signal number {n}")));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if let Some(n) = realtime_signal(&name) {
        return Ok(n);
    }
    // Old aliases the CRI Signal enum also carries.
    let name = match name.as_str() {
        "SIGCLD" => "SIGCHLD",
        "SIGPOLL" => "SIGIO",
        "SIGIOT" => "SIGABRT",
        other => other,
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as u32)
        .map_err(|_| Error::invalid(format!("unknown signal {s:?}")))
}

/// SIGRTMIN, SIGRTMIN+n / SIGRTMINPLUSn, SIGRTMAX-n / SIGRTMAXMINUSn, SIGRTMAX.
fn realtime_signal(name: &str) -> Option<u32> {
    let min = libc::SIGRTMIN();
    let max = libc::SIGRTMAX();
    let offset = |rest: &str| rest.parse::<i32>().ok();
    let n = if name == "SIGRTMIN" {
        min
    } else if name == "SIGRTMAX" {
        max
    } else if let Some(r) = name
        .strip_prefix("SIGRTMINPLUS")
        .or_else(|| name.strip_prefix("SIGRTMIN+"))
    {
        min + offset(r)?
    } else if let Some(r) = name
        .strip_prefix("SIGRTMAXMINUS")
        .or_else(|| name.strip_prefix("SIGRTMAX-"))
    {
        max - offset(r)?
    } else {
        return None;
    };
    (min..=max).contains(&n).then_some(n as u32)
}

/// The signal a CRI `Signal` value names; RUNTIME_DEFAULT (0) is None.
pub fn cri_signal_number(v: i32) -> Result<Option<u32>> {
    if v == 0 {
        return Ok(None);
    }
    let sig = cri::Signal::try_from(v)
        .map_err(|_| Error::invalid(format!("stop_signal: unknown signal value {v}")))?;
    parse_signal(sig.as_str_name())
        .map(Some)
        .map_err(|e| Error::invalid(format!("stop_signal: {e}")))
}

/// The CRI `Signal` value of a signal number (the first name the enum gives it).
pub fn cri_signal_value(n: u32) -> i32 {
    (1..=65)
        .find(|&v| matches!(cri_signal_number(v), Ok(Some(x)) if x == n))
        .unwrap_or(0)
}

/// The graceful stop signal: the pod's (CRI `stop_signal`, kubelet 1.33+), else the image's
/// STOPSIGNAL recorded at create, else SIGTERM.
pub fn stop_signal(cri_stop_signal: i32, image_stop_signal: &str) -> Result<u32> {
    if let Some(n) = cri_signal_number(cri_stop_signal)? {
        return Ok(n);
    }
    if image_stop_signal.is_empty() {
        Ok(libc::SIGTERM as u32)
    } else {
        parse_signal(image_stop_signal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_short_name_and_number() {
        assert_eq!(parse_signal("SIGUSR1").unwrap(), libc::SIGUSR1 as u32);
        assert_eq!(parse_signal("usr1").unwrap(), libc::SIGUSR1 as u32);
        assert_eq!(parse_signal("15").unwrap(), libc::SIGTERM as u32);
        assert!(matches!(
            parse_signal("SIGNOPE"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(parse_signal("99").is_err());
        assert_eq!(
            parse_signal("SIGRTMIN+2").unwrap(),
            libc::SIGRTMIN() as u32 + 2
        );
        assert_eq!(parse_signal("SIGCLD").unwrap(), libc::SIGCHLD as u32);
    }

    #[test]
    fn cri_signal_enum_maps_to_numbers_and_back() {
        assert_eq!(cri_signal_number(0).unwrap(), None);
        let usr2 = cri::Signal::Sigusr2 as i32;
        assert_eq!(cri_signal_number(usr2).unwrap(), Some(libc::SIGUSR2 as u32));
        assert_eq!(
            cri_signal_number(cri::Signal::Sigrtmax as i32).unwrap(),
            Some(libc::SIGRTMAX() as u32)
        );
        assert_eq!(
            cri_signal_number(cri::Signal::Sigrtmaxminus1 as i32).unwrap(),
            Some(libc::SIGRTMAX() as u32 - 1)
        );
        assert!(cri_signal_number(999).is_err());
        assert_eq!(
            cri_signal_value(libc::SIGTERM as u32),
            cri::Signal::Sigterm as i32
        );
        // Every enum value names a signal this host has.
        for v in 1..=65 {
            assert!(cri_signal_number(v).unwrap().is_some(), "{v}");
        }
    }
}
