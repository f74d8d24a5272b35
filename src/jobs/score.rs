//! Scoring: a token sequence's teacher-forced logits on one engine and path,
//! one step per scored token, at the run's own precision.

use crate::backend::{AttnPath, Backend};
use crate::engine::record::{ScoredRun, ScoredStep};
use crate::engine::Engine;
use crate::error::{Error, Result};

/// `tokens` scored after `prompt` on `e`'s `path`: one teacher-forced pass
/// over `prompt` and `tokens` but the last; step i is the row that predicts
/// `tokens[i]`. `keep_logits`: every row in full.
pub fn score<B: Backend>(
    e: &Engine<B>,
    prompt: &[u32],
    tokens: &[u32],
    path: AttnPath,
    top_k: usize,
    keep_logits: bool,
) -> Result<ScoredRun> {
    if prompt.is_empty() || tokens.is_empty() {
        return Err(Error::Prompt(
            "score needs a prompt and at least one token to score".into(),
        ));
    }
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= e.config.vocab_size) {
        return Err(Error::Prompt(format!(
            "token id {t} is outside the vocabulary (size {})",
            e.config.vocab_size
        )));
    }
    let mut seq = prompt.to_vec();
    seq.extend_from_slice(&tokens[..tokens.len() - 1]);
    let rows = e.teacher_forced(&seq, path, &mut Default::default())?;
    let steps = rows[prompt.len() - 1..]
        .iter()
        .zip(tokens)
        .map(|(row, &t)| ScoredStep::from_logits(row, t, top_k, keep_logits))
        .collect();
    Ok(ScoredRun {
        fingerprint: e.fingerprint(path),
        prompt: prompt.to_vec(),
        tokens: tokens.to_vec(),
        steps,
    })
}
