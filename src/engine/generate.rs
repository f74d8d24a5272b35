//! Greedy generation and teacher-forced passes, producing recorded runs.

use super::record::{Fingerprint, RecordedRun, StepRecord};
use super::{Capture, Engine, Session};
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

    pub(super) fn check_prompt(&self, prompt: &[u32], extra: usize) -> Result<()> {
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
        if prompt.len().checked_add(extra).is_none_or(|end| end > max) {
            return Err(Error::Prompt(format!(
                "{} prompt tokens + {extra} generated exceed max_position_embeddings {max}",
                prompt.len()
            )));
        }
        Ok(())
    }

    /// Whether decode steps may be recorded and replayed: per-layer captures
    /// copy to the host, which a recorded step cannot do. (A backend that
    /// needs the host inside a step, e.g. for MoE routing, fails the
    /// recording with an error that says so.)
    fn steps_recordable(&self, keep_hidden: bool) -> bool {
        !keep_hidden
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
        let mut hidden = opts.keep_hidden.then(Vec::new);
        let width = self.config.hidden_size;
        let mut dec = Decoder::new(self, opts.path, self.steps_recordable(opts.keep_hidden));
        for i in 0..opts.max_tokens {
            let v = if i == 0 || opts.keep_hidden {
                let mut cap = Capture {
                    layers: opts.keep_hidden.then(Vec::new),
                    qkv: None,
                };
                let input = if i == 0 {
                    prompt.to_vec()
                } else {
                    vec![steps.last().map_or(0, |s: &StepRecord| s.token)]
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
                self.backend.to_host(&logits)?.0
            } else {
                let token = steps.last().map_or(0, |s: &StepRecord| s.token);
                let logits = dec.step(&mut session, token)?;
                self.backend.to_host(logits)?.0
            };
            super::finite(&self.backend, "logits", || format!("step {i}"), &v)?;
            let step = StepRecord::from_logits(&v, opts.top_k, opts.keep_logits);
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

    /// Greedy tokens only, picked on the backend (nothing but the token
    /// crosses to the host): the loop `lockstep bench` times. `on_token(i)`
    /// runs after token i is known. Where the backend pipelines decode
    /// (`Backend::argmax_deferred`), step i+1 is queued before token i is
    /// read; the tokens are the same either way.
    pub fn decode_greedy(
        &self,
        prompt: &[u32],
        n: usize,
        path: AttnPath,
        on_token: &mut dyn FnMut(usize),
    ) -> Result<Vec<u32>> {
        self.check_prompt(prompt, n)?;
        let mut session = self.new_session(prompt.len() + n)?;
        let mut tokens = Vec::with_capacity(n);
        if n == 0 {
            return Ok(tokens);
        }
        let be = &self.backend;
        let logits = self.forward(&mut session, prompt, path, false, &mut Capture::default())?;
        let Some(mut pending) = be.argmax_deferred(&logits)? else {
            tokens.push(be.argmax(&logits)?);
            on_token(0);
            return self.decode_greedy_stepwise(session, tokens, n, path, on_token);
        };
        drop(logits);
        for i in 1..n {
            let x = be.embed_deferred(&self.embed, &pending)?;
            let logits =
                self.forward_embedded(&mut session, x, 1, path, false, &mut Capture::default())?;
            let next = be.argmax_deferred(&logits)?.ok_or_else(|| Error::Engine {
                problem: "the backend stopped pipelining decode mid-run".into(),
            })?;
            tokens.push(be.deferred_token(&pending)?);
            on_token(i - 1);
            pending = next;
        }
        tokens.push(be.deferred_token(&pending)?);
        on_token(n - 1);
        Ok(tokens)
    }

    /// `decode_greedy` after the prefill's token, one step after another
    /// (with recorded steps where the backend records them).
    fn decode_greedy_stepwise(
        &self,
        mut session: Session<B::Cache>,
        mut tokens: Vec<u32>,
        n: usize,
        path: AttnPath,
        on_token: &mut dyn FnMut(usize),
    ) -> Result<Vec<u32>> {
        let mut dec = Decoder::new(self, path, self.steps_recordable(false));
        for i in tokens.len()..n {
            let logits = dec.step(&mut session, tokens[i - 1])?;
            tokens.push(self.backend.argmax(logits)?);
            on_token(i);
        }
        Ok(tokens)
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
        super::finite(
            &self.backend,
            "logits",
            || format!("a teacher-forced pass over {} tokens", tokens.len()),
            &v,
        )?;
        Ok((0..rows)
            .map(|r| v[r * cols..(r + 1) * cols].to_vec())
            .collect())
    }
}

/// Runs single-token decode steps; where the backend records steps, the
/// first is a warm-up (it sizes every buffer), the second is recorded and
/// every later one is a replay with a new token and position.
struct Decoder<'e, B: Backend> {
    engine: &'e Engine<B>,
    path: AttnPath,
    record: bool,
    warm: bool,
    recorded: Option<B::Tensor>,
    last: Option<B::Tensor>,
}

impl<'e, B: Backend> Decoder<'e, B> {
    fn new(engine: &'e Engine<B>, path: AttnPath, record: bool) -> Self {
        Decoder {
            engine,
            path,
            record,
            warm: false,
            recorded: None,
            last: None,
        }
    }

    /// Logits of the step that feeds `token` at the session's next position.
    fn step(&mut self, session: &mut Session<B::Cache>, token: u32) -> Result<&B::Tensor> {
        let (e, be) = (self.engine, &self.engine.backend);
        if self.record {
            be.stage_step(token, session.pos)?;
            if self.recorded.is_some() {
                be.replay_step()?;
                session.pos += 1;
                for c in session.caches.iter_mut() {
                    be.cache_advance(c, 1);
                }
                return self.recorded.as_ref().ok_or_else(|| Error::Engine {
                    problem: "the recorded step's output is gone".into(),
                });
            }
            if self.warm {
                // The warm-up step's output goes back to the pool first: the
                // recording must find every buffer the warm-up step used.
                self.last = None;
                if be.begin_step_capture()? {
                    let out =
                        e.forward(session, &[token], self.path, false, &mut Capture::default());
                    let end = be.end_step_capture();
                    let out = out?;
                    end?;
                    be.replay_step()?;
                    return Ok(self.recorded.insert(out));
                }
                self.record = false;
            }
            self.warm = true;
        }
        let out = e.forward(session, &[token], self.path, false, &mut Capture::default())?;
        Ok(self.last.insert(out))
    }
}

impl<B: Backend> Drop for Decoder<'_, B> {
    fn drop(&mut self) {
        if self.recorded.is_some() {
            self.engine.backend.release_step();
        }
    }
}
