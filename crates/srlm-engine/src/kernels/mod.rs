//! The CPU kernels the model calls: the Q4_1 and Q8_0 matmuls (`qmatmul.rs`), one attention kernel over
//! every decoding sequence's cache (`decode_attention.rs`), and the fused ops with hand-written
//! backward passes that training uses (`autograd.rs`), and how each is checked against the
//! composed ops it replaces (`check.rs`); the bf16 GEMM training uses where the CPU has
//! AVX512-BF16 (`gemm_bf16.rs`), and what the CPU and OS allow, detected at run time (`cpu.rs`);
//! `exp` and sums the compiler vectorizes (`exp.rs`).

pub mod autograd;
pub mod check;
pub mod cpu;
pub mod decode_attention;
pub mod exp;
pub mod gemm_bf16;
pub mod qmatmul;
