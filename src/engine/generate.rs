//! Greedy generation and teacher-forced passes, producing recorded runs.

use super::record::{Fingerprint, RecordedRun, StepRecord};
use super::{Capture, Engine};
use crate::backend::{AttnPath, Backend};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub path: AttnPath,
    /// Keep every step's full logit vector in the record.
    pub keep_logits: bool,
    /// How many top logits each step records.
    pub top_k: usize,
    /// Keep each layer's output for the last row of every step.
    pub keep_hidden: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 16,
            path: AttnPath::Graph,
            keep_logits: false,
            top_k: 8,
            keep_hidden: false,
        }
    }
}

impl<B: Backend> Engine<B> {
    pub fn fingerprint(&self, path: AttnPath) -> Fingerprint {
        Fingerprint::new(
            self.backend.device_info(),
            path,
            &self.model_origin,
            &self.model_hash,
        )
    }

    fn check_prompt(&self, prompt: &[u32], extra: usize) -> Result<()> {
        if prompt.is_empty() {
            return Err(Error::Prompt("the prompt holds no tokens".into()));
        }
        if let Some(&bad) = prompt
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(Error::Prompt(format!(
                "token id {bad} is not below vocab_size {}",
                self.config.vocab_size
            )));
        }
        let max = self.config.max_position_embeddings;
        if prompt.len() + extra > max {
            return Err(Error::Prompt(format!(
                "{} prompt tokens + {extra} generated exceed max_position_embeddings {max}",
                prompt.len()
            )));
        }
        Ok(())
    }

    /// Greedy decoding: prefill the prompt, then one token per step.
    /// `on_step(i)` is called after each step (progress reporting).
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_step: &mut dyn FnMut(usize),
    ) -> Result<RecordedRun> {
        self.check_prompt(prompt, opts.max_tokens)?;
        let mut session = self.new_session(prompt.len() + opts.max_tokens)?;
        let mut steps = Vec::with_capacity(opts.max_tokens);
        let mut input: Vec<u32> = prompt.to_vec();
        let mut hidden = opts.keep_hidden.then(Vec::new);
        let width = self.config.hidden_size;
        for i in 0..opts.max_tokens {
            let mut cap = Capture {
                layers: opts.keep_hidden.then(Vec::new),
                qkv: None,
            };
            let logits = self.forward(&mut session, &input, opts.path, false, &mut cap)?;
            if let (Some(h), Some(layers)) = (hidden.as_mut(), cap.layers) {
                h.push(
                    layers
                        .iter()
                        .map(|l| l[l.len() - width..].iter().map(|&v| v as f32).collect())
                        .collect(),
                );
            }
            let (v, _) = self.backend.to_host(&logits)?;
            let step = StepRecord::from_logits(&v, opts.top_k, opts.keep_logits);
            input = vec![step.token];
            steps.push(step);
            on_step(i + 1);
        }
        Ok(RecordedRun {
            fingerprint: self.fingerprint(opts.path),
            prompt: prompt.to_vec(),
            tokens: steps.iter().map(|s| s.token).collect(),
            steps,
            hidden,
        })
    }

    /// One prefill over `tokens` returning every row's logits and, as asked,
    /// per-layer outputs and q/k/v: the teacher-forced view used for layer-
    /// and op-level comparisons.
    pub fn teacher_forced(
        &self,
        tokens: &[u32],
        path: AttnPath,
        capture: &mut Capture,
    ) -> Result<Vec<Vec<f64>>> {
        self.check_prompt(tokens, 0)?;
        let mut session = self.new_session(tokens.len())?;
        let logits = self.forward(&mut session, tokens, path, true, capture)?;
        let (v, [rows, cols]) = self.backend.to_host(&logits)?;
        Ok((0..rows)
            .map(|r| v[r * cols..(r + 1) * cols].to_vec())
            .collect())
    }
}
