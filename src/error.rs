//! The error facts several modules share, each defined once: a buffer shorter
//! than its format needs ([`BufferTooSmall`]) and an fpstate handed to configs
//! it was not made under ([`ForeignFpstate`]). The module errors
//! ([`FpstateError`](crate::fpstate::FpstateError),
//! [`UabiError`](crate::uabi::UabiError)) wrap them and return them as their
//! `source()`.

use core::fmt;

/// A buffer is shorter than the format it must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferTooSmall {
    /// Bytes needed.
    pub needed: usize,
    /// Bytes given.
    pub got: usize,
}

impl fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "buffer of {} bytes, {} needed", self.got, self.needed)
    }
}

impl core::error::Error for BufferTooSmall {}

impl BufferTooSmall {
    /// `Ok` when `got` bytes hold the `needed` ones: the one length check every
    /// format in the crate makes.
    pub(crate) const fn check(got: usize, needed: usize) -> Result<(), Self> {
        if got < needed {
            Err(Self { needed, got })
        } else {
            Ok(())
        }
    }

    /// The first `needed` bytes of `buf`.
    pub(crate) fn prefix(buf: &[u8], needed: usize) -> Result<&[u8], Self> {
        let got = buf.len();
        buf.get(..needed).ok_or(Self { needed, got })
    }

    /// The first `needed` bytes of `buf`, writable.
    pub(crate) fn prefix_mut(buf: &mut [u8], needed: usize) -> Result<&mut [u8], Self> {
        let got = buf.len();
        buf.get_mut(..needed).ok_or(Self { needed, got })
    }
}

/// An fpstate was handed to a [`Configs`](crate::config::Configs) other than the
/// one it was made under (another CPU's enumeration, or another policy): its
/// size, form and components mean nothing there, so the operation is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForeignFpstate;

impl fmt::Display for ForeignFpstate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the fpstate was made under other configs")
    }
}

impl core::error::Error for ForeignFpstate {}
