//! This process's resident memory: its peak (Linux `VmHWM`), and a reset of that peak so a
//! stage of `srlm run` can be measured on its own although every stage runs in one process.

/// A `kB` line of `/proc/self/status` (Linux), in MiB.
fn status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Peak resident memory of this process, in MiB (Linux `VmHWM`); `None` elsewhere.
pub fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// Resident memory of this process now, in MiB (Linux `VmRSS`); `None` elsewhere.
#[cfg(test)]
fn rss_mib() -> Option<f64> {
    status_mib("VmRSS:")
}

/// Lowers the peak to the memory resident now (Linux 4.0 and later: `5` written to
/// `/proc/self/clear_refs`), so the next [`peak_rss_mib`] is the peak since this call.
/// Whether it could. The kernel's own record goes with it: `getrusage` and `/usr/bin/time`
/// then report the peak since the last reset, not the process's.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Hands the heap memory freed so far back to the system (glibc's `malloc_trim`), which the
/// allocator otherwise keeps, so that one stage of `srlm run` does not start with what the
/// stages before it freed still resident. Does nothing with another C library.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the heap to the kernel; it is
    // thread-safe and touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer of `mib` MiB with every page written, so it is resident.
    fn resident(mib: usize) -> Vec<u8> {
        let mut v = vec![0u8; mib << 20];
        for page in v.chunks_mut(4096) {
            page[0] = 1;
        }
        v
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn freed_heap_memory_is_given_back() {
        // 128 MiB of small allocations (below glibc's mmap threshold, so on the heap), all
        // freed but the last, which pins the heap's top: glibc keeps the rest resident.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 32 << 10]).collect();
        let last = blocks.pop();
        drop(blocks);
        let kept = rss_mib().unwrap();
        release_freed_memory();
        let after = rss_mib().unwrap();
        drop(std::hint::black_box(last));
        assert!(
            after <= kept - 64.0,
            "resident {after:.0} MiB after the release, {kept:.0} MiB before it"
        );
    }

    #[test]
    fn the_peak_follows_a_buffer_and_falls_when_reset() {
        if !reset_peak_rss() {
            eprintln!("skipped: this system cannot reset the peak resident memory");
            return;
        }
        let before = peak_rss_mib().unwrap();
        let buffer = resident(512);
        let with_buffer = peak_rss_mib().unwrap();
        drop(std::hint::black_box(buffer));
        assert!(
            with_buffer >= before + 256.0,
            "peak {with_buffer:.0} MiB with a 512 MiB buffer, {before:.0} before it"
        );
        // The buffer was given back on drop (an allocation this large is its own mapping).
        assert!(reset_peak_rss());
        let after = peak_rss_mib().unwrap();
        assert!(
            after <= with_buffer - 256.0,
            "peak {after:.0} MiB after a reset, {with_buffer:.0} with the buffer"
        );
    }
}
