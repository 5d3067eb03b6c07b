//! The learning-rate schedule: linear warmup, then cosine decay to a floor, as transformers'
//! `get_cosine_with_min_lr_schedule_with_warmup` computes it (the paper: 5.5e-6 down to 1.1e-6).

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    pub peak_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        let floor = if self.peak_lr > 0.0 {
            self.min_lr / self.peak_lr
        } else {
            0.0
        };
        self.peak_lr * (cosine * (1.0 - floor) + floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let s = Schedule {
            peak_lr: 5.5e-6,
            min_lr: 1.1e-6,
            warmup_steps: 10,
            total_steps: 110,
        };
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 2.75e-6).abs() < 1e-15);
        assert!((s.lr(10) - 5.5e-6).abs() < 1e-15);
        assert!((s.lr(60) - (1.1e-6 + 0.5 * 4.4e-6)).abs() < 1e-15);
        assert!((s.lr(110) - 1.1e-6).abs() < 1e-15);
        assert!((s.lr(500) - 1.1e-6).abs() < 1e-15);
        for step in 10..110 {
            assert!(s.lr(step + 1) <= s.lr(step));
        }
    }
}
