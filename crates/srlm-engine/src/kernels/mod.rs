//! The CPU kernels the model calls: the Q4_1 matmul (`q4_1.rs`), one attention kernel over
//! every decoding sequence's cache (`decode_attention.rs`), and the fused ops with hand-written
//! backward passes that training uses (`autograd.rs`), and how each is checked against the
//! composed ops it replaces (`check.rs`).

pub mod autograd;
pub mod check;
pub mod decode_attention;
pub mod q4_1;
