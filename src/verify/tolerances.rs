//! The tolerance registry: one committed file (`tolerances.json` at the
//! repository root, embedded at build time), every entry with a name, metric,
//! value and reason. Code names a tolerance by a `Tol` variant, so a typo is
//! a compile error; the committed registry must define exactly the names
//! `Tol` lists, which `registry()` checks once and a unit test pins.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    pub name: String,
    pub metric: String,
    pub value: f64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registry {
    pub schema: u32,
    pub tolerances: Vec<Tolerance>,
}

/// Every tolerance the code judges by; `name()` is its registry key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Tol {
    FusedVsGraphRms,
    FusedVsGraphF64Rms,
    TruthVsTransformersF32LogitsRelRms,
    CpuBf16VsTransformersBf16LogitsRelRms,
    NearTieMarginF32,
    NearTieMarginBf16,
    TruthRelativeFactor,
    TruthRelRmsCeiling,
    BisectLayerRelRms,
    CudaVsCpuBf16LogitsRelRms,
    CudaVsCpuBf16OpRelRms,
    MlxBf16VsCpuBf16LogitsRelRms,
    MlxGpuBf16VsCpuBf16LogitsRelRms,
    MoeRoutingNearTieBf16,
    ContainmentQuantile,
    TruthVsTransformersF64LogitsRelRms,
    TpSimF64VsOneDeviceLogitsRelRms,
}

impl Tol {
    pub const ALL: [Tol; 17] = [
        Tol::FusedVsGraphRms,
        Tol::FusedVsGraphF64Rms,
        Tol::TruthVsTransformersF32LogitsRelRms,
        Tol::CpuBf16VsTransformersBf16LogitsRelRms,
        Tol::NearTieMarginF32,
        Tol::NearTieMarginBf16,
        Tol::TruthRelativeFactor,
        Tol::TruthRelRmsCeiling,
        Tol::BisectLayerRelRms,
        Tol::CudaVsCpuBf16LogitsRelRms,
        Tol::CudaVsCpuBf16OpRelRms,
        Tol::MlxBf16VsCpuBf16LogitsRelRms,
        Tol::MlxGpuBf16VsCpuBf16LogitsRelRms,
        Tol::MoeRoutingNearTieBf16,
        Tol::ContainmentQuantile,
        Tol::TruthVsTransformersF64LogitsRelRms,
        Tol::TpSimF64VsOneDeviceLogitsRelRms,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tol::FusedVsGraphRms => "fused_vs_graph_rms",
            Tol::FusedVsGraphF64Rms => "fused_vs_graph_f64_rms",
            Tol::TruthVsTransformersF32LogitsRelRms => "truth_vs_transformers_f32_logits_rel_rms",
            Tol::CpuBf16VsTransformersBf16LogitsRelRms => {
                "cpu_bf16_vs_transformers_bf16_logits_rel_rms"
            }
            Tol::NearTieMarginF32 => "near_tie_margin_f32",
            Tol::NearTieMarginBf16 => "near_tie_margin_bf16",
            Tol::TruthRelativeFactor => "truth_relative_factor",
            Tol::TruthRelRmsCeiling => "truth_rel_rms_ceiling",
            Tol::BisectLayerRelRms => "bisect_layer_rel_rms",
            Tol::CudaVsCpuBf16LogitsRelRms => "cuda_vs_cpu_bf16_logits_rel_rms",
            Tol::CudaVsCpuBf16OpRelRms => "cuda_vs_cpu_bf16_op_rel_rms",
            Tol::MlxBf16VsCpuBf16LogitsRelRms => "mlx_bf16_vs_cpu_bf16_logits_rel_rms",
            Tol::MlxGpuBf16VsCpuBf16LogitsRelRms => "mlx_gpu_bf16_vs_cpu_bf16_logits_rel_rms",
            Tol::MoeRoutingNearTieBf16 => "moe_routing_near_tie_bf16",
            Tol::ContainmentQuantile => "containment_quantile",
            Tol::TruthVsTransformersF64LogitsRelRms => "truth_vs_transformers_f64_logits_rel_rms",
            Tol::TpSimF64VsOneDeviceLogitsRelRms => "tp_sim_f64_vs_one_device_logits_rel_rms",
        }
    }

    /// The variant of a registry name, if the code knows it.
    pub fn from_name(name: &str) -> Option<Tol> {
        Tol::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The committed value.
    pub fn value(self) -> f64 {
        registry().value(self)
    }
}

impl std::fmt::Display for Tol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Tol> for &'static str {
    fn from(t: Tol) -> Self {
        t.name()
    }
}

impl TryFrom<String> for Tol {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        Tol::from_name(&s).ok_or_else(|| format!("unknown tolerance `{s}`"))
    }
}

const EMBEDDED: &str = include_str!("../../tolerances.json");

impl Registry {
    pub fn parse(text: &str) -> Result<Self> {
        let r: Registry = serde_json::from_str(text)
            .map_err(|e| Error::invalid("tolerances.json", e.to_string()))?;
        let mut names: Vec<&str> = r.tolerances.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::invalid(
                "tolerances.json",
                format!("`{}` is defined twice", w[0]),
            ));
        }
        for t in &r.tolerances {
            if !(t.value.is_finite() && t.value >= 0.0) || t.reason.trim().is_empty() {
                return Err(Error::invalid(
                    "tolerances.json",
                    format!(
                        "`{}` needs a finite non-negative value and a reason",
                        t.name
                    ),
                ));
            }
        }
        Ok(r)
    }

    pub fn get(&self, name: &str) -> Option<&Tolerance> {
        self.tolerances.iter().find(|t| t.name == name)
    }

    /// Names `Tol` lists that this registry lacks, and names it defines
    /// that `Tol` does not list: both empty for the committed registry.
    pub fn mismatches(&self) -> (Vec<&'static str>, Vec<&str>) {
        let missing = Tol::ALL
            .iter()
            .map(|t| t.name())
            .filter(|n| self.get(n).is_none())
            .collect();
        let unknown = self
            .tolerances
            .iter()
            .map(|t| t.name.as_str())
            .filter(|n| Tol::from_name(n).is_none())
            .collect();
        (missing, unknown)
    }

    fn value(&self, t: Tol) -> f64 {
        self.get(t.name())
            .map(|e| e.value)
            .expect("registry() checked that every Tol is defined")
    }
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();
static OVERRIDES: OnceLock<Vec<Override>> = OnceLock::new();

/// The committed registry, checked against `Tol` on first use, with this
/// process's overrides (`apply_overrides`) laid over it.
pub fn registry() -> &'static Registry {
    REGISTRY.get_or_init(|| {
        let mut r = Registry::parse(EMBEDDED).expect("committed tolerances.json is valid");
        let (missing, unknown) = r.mismatches();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "tolerances.json and verify::tolerances::Tol disagree: missing {missing:?}, not in Tol {unknown:?}"
        );
        for o in OVERRIDES.get().map_or(&[][..], Vec::as_slice) {
            if let Some(t) = r.tolerances.iter_mut().find(|t| t.name == o.name) {
                t.value = o.value;
                t.reason = format!("OVERRIDDEN from {} ({}): {}", o.committed, o.file, o.reason);
            }
        }
        r
    })
}

/// One committed value replaced for this process (`--tolerances FILE`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Override {
    pub name: String,
    pub committed: f64,
    pub value: f64,
    pub reason: String,
    /// The file it came from.
    pub file: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideEntry {
    name: String,
    value: f64,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideFile {
    tolerances: Vec<OverrideEntry>,
}

/// Lays the tolerances of `path` (`{"tolerances": [{"name", "value",
/// "reason"}]}`) over the committed registry for the rest of the process.
/// Every entry must name a tolerance the code knows, once, with a finite
/// non-negative value and a reason. Refused once any tolerance has been
/// read, or a second time: a run judges by one registry throughout.
pub fn apply_overrides(path: &std::path::Path) -> Result<&'static [Override]> {
    let file = path.display().to_string();
    let text = crate::util::read_text_bounded(path, crate::util::limits::CONFIG)?;
    let f: OverrideFile = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let committed = Registry::parse(EMBEDDED)?;
    let mut out: Vec<Override> = Vec::new();
    for e in f.tolerances {
        let bad = |why: String| Error::invalid(format!("{file}: tolerance `{}`", e.name), why);
        let t = committed
            .get(&e.name)
            .ok_or_else(|| bad("is not in the registry (docs/tolerances.md lists them)".into()))?;
        if !(e.value.is_finite() && e.value >= 0.0) {
            return Err(bad(format!(
                "value {} is not finite and non-negative",
                e.value
            )));
        }
        if e.reason.trim().is_empty() {
            return Err(bad("needs a reason".into()));
        }
        if out.iter().any(|o| o.name == e.name) {
            return Err(bad("is overridden twice".into()));
        }
        out.push(Override {
            committed: t.value,
            name: e.name,
            value: e.value,
            reason: e.reason,
            file: file.clone(),
        });
    }
    if REGISTRY.get().is_some() {
        return Err(Error::invalid(
            file,
            "tolerance overrides must be applied before any tolerance is read",
        ));
    }
    OVERRIDES
        .set(out)
        .map_err(|_| Error::invalid(file, "tolerance overrides were applied already"))?;
    Ok(overrides())
}

/// This process's overrides (empty without `--tolerances`).
pub fn overrides() -> &'static [Override] {
    OVERRIDES.get().map_or(&[], Vec::as_slice)
}

/// A tolerance's committed value.
pub fn tol(t: Tol) -> f64 {
    t.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_registry_defines_exactly_the_tolerances_the_code_names() {
        let r = Registry::parse(EMBEDDED).unwrap();
        assert_eq!(r.mismatches(), (vec![], vec![]));
        for t in Tol::ALL {
            assert_eq!(Tol::from_name(t.name()), Some(t));
            assert!(tol(t).is_finite());
        }
    }

    #[test]
    fn a_registry_without_a_named_tolerance_is_reported() {
        let one = r#"{"schema":1,"tolerances":[{"name":"fused_vs_graph_rms","metric":"rms","value":1,"reason":"r"},{"name":"typo_rms","metric":"rms","value":1,"reason":"r"}]}"#;
        let r = Registry::parse(one).unwrap();
        let (missing, unknown) = r.mismatches();
        assert_eq!(missing.len(), Tol::ALL.len() - 1);
        assert_eq!(unknown, vec!["typo_rms"]);
    }
}
