//! What the CPU can run, detected once at run time: the instruction sets the processor lists
//! *and* the operating system enables. A kernel is chosen from these, never from how the binary
//! was compiled, so a binary built on one x86-64 machine runs on any other.
//!
//! std's `is_x86_feature_detected!` already checks the OS's side for AVX and AVX-512 (the XCR0
//! bits that say the OS saves those registers). AMX is checked here by hand: cpuid lists it, XCR0
//! must hold the tile-state bits, and Linux must grant the process the tile data
//! (`request_tile_permission`); without the last, its instructions fault.

use std::sync::OnceLock;

/// The features srlm's kernels may use, each true only when both cpuid and the OS allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuFeatures {
    /// AVX2 with FMA and F16C (the Q4_1 kernel).
    pub avx2: bool,
    /// AVX-512 F, BW and VL.
    pub avx512: bool,
    /// AVX512-BF16: `vdpbf16ps`, bf16 dot products into f32 (the bf16 GEMM).
    pub avx512_bf16: bool,
    /// AVX512-VNNI: int8 dot products.
    pub avx512_vnni: bool,
    /// AMX tiles listed by cpuid (whether or not usable).
    pub amx_listed: bool,
    /// AMX tiles (with AMX-BF16) listed, their state enabled in XCR0 by the OS, and this
    /// process granted them (Linux's `arch_prctl` permission).
    pub amx_enabled: bool,
    /// An AMD processor (cpuid vendor "AuthenticAMD"): where a kernel's speed depends on the
    /// microarchitecture rather than the instruction set alone (see `gemm_bf16::beats_f32`).
    pub amd: bool,
}

impl CpuFeatures {
    /// The features of this machine (detected on first use).
    pub fn get() -> &'static CpuFeatures {
        static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
        FEATURES.get_or_init(detect)
    }

    /// The names of the usable features, for benchmarks and logs
    /// ("avx2 avx512 avx512-bf16 ..."; "amx listed but not enabled by the OS" when so).
    pub fn describe(&self) -> String {
        let mut v: Vec<&str> = Vec::new();
        for (on, name) in [
            (self.avx2, "avx2"),
            (self.avx512, "avx512"),
            (self.avx512_vnni, "avx512-vnni"),
            (self.avx512_bf16, "avx512-bf16"),
            (self.amx_enabled, "amx"),
        ] {
            if on {
                v.push(name);
            }
        }
        if v.is_empty() {
            v.push("portable only");
        }
        let mut s = v.join(" ");
        if self.amx_listed && !self.amx_enabled {
            s.push_str(" (amx listed by cpuid but not usable: the OS does not enable or grant it)");
        }
        s
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> CpuFeatures {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl");
    let (amx_listed, amx_enabled) = amx();
    let vendor = std::arch::x86_64::__cpuid(0);
    let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163); // "AuthenticAMD"
    CpuFeatures {
        amd,
        avx2,
        avx512,
        avx512_bf16: avx512 && has!("avx512bf16"),
        avx512_vnni: avx512 && has!("avx512vnni"),
        amx_listed,
        amx_enabled,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuFeatures {
    CpuFeatures::default()
}

/// (listed by cpuid, tile state enabled by the OS in XCR0 bits 17 and 18).
#[cfg(target_arch = "x86_64")]
fn amx() -> (bool, bool) {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // Leaf 7 is read only when the maximum leaf reaches it.
    let max_leaf = __cpuid(0).eax;
    if max_leaf < 7 {
        return (false, false);
    }
    let leaf7 = __cpuid_count(7, 0);
    let listed = leaf7.edx & (1 << 24) != 0 && leaf7.edx & (1 << 22) != 0; // AMX-TILE, AMX-BF16
    if !listed {
        return (false, false);
    }
    let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
    if !osxsave {
        return (true, false);
    }
    let xcr0 = xgetbv0();
    let tile_state = (1u64 << 17) | (1u64 << 18); // XTILECFG, XTILEDATA
    (
        true,
        xcr0 & tile_state == tile_state && request_tile_permission(),
    )
}

/// Linux hands out the AMX tile state only to a process that asks for it
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); without that, the first tile
/// instruction dies with SIGILL even though cpuid and XCR0 allow it (what llama.cpp built
/// with `-march=native` meets in these VMs). Asking is harmless and process-wide.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl with these arguments only changes the process's permitted xsave
    // features; it reads and writes no memory of ours.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_permission() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: called only when cpuid reports OSXSAVE, which makes xgetbv legal.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack));
    }
    ((hi as u64) << 32) | lo as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatcher's view never claims more than the OS enables: each AVX-512 feature
    /// implies the XCR0 bits for the ZMM state (5, 6, 7) and the AVX state (1, 2); AMX implies
    /// the tile state. Checked against XCR0 read here, independently of std's detection.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn no_feature_the_os_does_not_enable() {
        let f = CpuFeatures::get();
        eprintln!("cpu features: {}", f.describe());
        let osxsave = std::arch::x86_64::__cpuid(1).ecx & (1 << 27) != 0;
        let xcr0 = if osxsave { xgetbv0() } else { 0 };
        let avx_state = 0b110;
        let zmm_state = 0b1110_0000;
        if f.avx2 {
            assert_eq!(
                xcr0 & avx_state,
                avx_state,
                "avx2 chosen without the OS's AVX state"
            );
        }
        if f.avx512 || f.avx512_bf16 || f.avx512_vnni {
            assert!(f.avx512);
            assert_eq!(
                xcr0 & zmm_state,
                zmm_state,
                "avx-512 chosen without ZMM state"
            );
        }
        if f.amx_enabled {
            assert!(f.amx_listed);
            assert_eq!(xcr0 & (3 << 17), 3 << 17, "amx chosen without tile state");
        }
        if f.amx_listed && xcr0 & (3 << 17) != 3 << 17 {
            assert!(
                !f.amx_enabled,
                "amx listed by cpuid but its state is off: must not be used"
            );
        }
    }
}
