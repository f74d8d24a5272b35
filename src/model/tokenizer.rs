//! Text prompts: `tokenizer.json` through the `tokenizers` crate (feature
//! `tokenizer`), and the byte-level tokenizer synthetic folders ship so the
//! text path is exercised without downloading a real vocabulary.

use crate::error::{Error, Result};
use std::path::Path;

/// Encodes `text` with the folder's tokenizer.json (no special tokens added).
#[cfg(feature = "tokenizer")]
pub fn encode(path: &Path, text: &str) -> Result<Vec<u32>> {
    let tok = load(path)?;
    let enc = tok.encode(text, false).map_err(|e| Error::Tokenizer {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    Ok(enc.get_ids().to_vec())
}

#[cfg(not(feature = "tokenizer"))]
pub fn encode(path: &Path, _text: &str) -> Result<Vec<u32>> {
    Err(Error::Tokenizer {
        path: path.to_path_buf(),
        problem: "this build has no `tokenizer` feature; pass --prompt-ids".into(),
    })
}

/// Ids decoded for display: the text, and the ids the tokenizer has no
/// token for (a model whose vocabulary is larger than its tokenizer's, as
/// synthetic models are), which the text leaves out and the caller should
/// say so. Bytes a byte-level vocabulary decodes to that are not UTF-8 show
/// as U+FFFD.
pub struct Decoded {
    pub text: String,
    pub unknown: Vec<u32>,
    pub vocabulary: usize,
}

/// Decodes ids for display; `None` when no tokenizer is available.
#[cfg(feature = "tokenizer")]
pub fn decode(path: &Path, ids: &[u32]) -> Option<Decoded> {
    let tok = load(path).ok()?;
    let unknown = ids
        .iter()
        .copied()
        .filter(|&id| tok.id_to_token(id).is_none())
        .collect();
    Some(Decoded {
        text: tok.decode(ids, false).ok()?,
        unknown,
        vocabulary: tok.get_vocab_size(true),
    })
}

/// The tokenizer of a regular file of bounded size (`util::read_text_bounded`).
#[cfg(feature = "tokenizer")]
fn load(path: &Path) -> Result<tokenizers::Tokenizer> {
    let text = crate::util::read_text_bounded(path, crate::util::limits::TOKENIZER)?;
    text.parse::<tokenizers::Tokenizer>()
        .map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })
}

#[cfg(not(feature = "tokenizer"))]
pub fn decode(_path: &Path, _ids: &[u32]) -> Option<Decoded> {
    None
}

/// GPT-2's reversible map from bytes to printable characters, used by
/// byte-level BPE vocabularies (Qwen's included).
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).expect("valid code point")
}

/// A byte-level BPE tokenizer with the 256 byte tokens as ids 0..256 and no
/// merges: every byte of the text becomes one token.
pub fn byte_level_tokenizer_json() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..=255u8)
        .map(|b| (byte_char(b).to_string(), serde_json::Value::from(b as u32)))
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": []
        }
    })
}
