//! The model config (the `yolo26.yaml` dict an Ultralytics checkpoint embeds) and its resolution
//! into concrete layers: repeats scaled by depth, channels by width, arguments made explicit.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// The built-in YOLO26 detection config, for building a model without a checkpoint.
pub const YOLO26_YAML: &str = include_str!("yolo26.yaml");

/// A layer with every argument resolved (what Ultralytics' `parse_model` computes).
#[derive(Clone, Debug, PartialEq)]
pub enum LayerSpec {
    Conv { c1: usize, c2: usize, k: usize, s: usize },
    C3k2 { c1: usize, c2: usize, n: usize, c3k: bool, e: f64, attn: bool, shortcut: bool },
    Sppf { c1: usize, c2: usize, k: usize, n: usize, shortcut: bool },
    C2psa { c1: usize, c2: usize, n: usize, e: f64 },
    Upsample { scale: usize },
    Concat,
    Detect { nc: usize, reg_max: usize, end2end: bool, ch: Vec<usize> },
}

/// One node of the layer graph: where its inputs come from and what it is.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNode {
    /// Absolute indices of the input layers (`-1` resolved); empty for the network input.
    pub from: Vec<usize>,
    /// The `from` field as written (for the layer table).
    pub from_raw: Vec<i64>,
    pub spec: LayerSpec,
    /// Output channels.
    pub c_out: usize,
}

/// A resolved model: the layer graph plus global settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelPlan {
    pub nc: usize,
    pub scale: String,
    pub layers: Vec<LayerNode>,
}

/// Parses a YAML config text (e.g. [`YOLO26_YAML`]).
pub fn parse_yaml(text: &str) -> Result<Value> {
    serde_yaml::from_str::<Value>(text).context("invalid model YAML")
}

/// The scale letter of a weights or config name such as `yolo26s.yaml` or `yolo26n-seg.pt`.
pub fn scale_from_name(name: &str) -> Option<String> {
    let stem = std::path::Path::new(name).file_stem()?.to_str()?.to_ascii_lowercase();
    let rest = stem.strip_prefix("yolo26")?;
    let c = rest.chars().next()?;
    "nsmlx".contains(c).then(|| c.to_string())
}

fn as_f64(v: &Value, what: &str) -> Result<f64> {
    v.as_f64().ok_or_else(|| anyhow!("{what}: expected a number, found {v}"))
}

fn as_usize(v: &Value, what: &str) -> Result<usize> {
    v.as_u64().map(|x| x as usize).ok_or_else(|| anyhow!("{what}: expected a non-negative integer, found {v}"))
}

fn as_bool(v: &Value, what: &str) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        // YAML written by hand sometimes quotes booleans; the reference literal-evals strings.
        Value::String(s) if s == "True" || s == "true" => Ok(true),
        Value::String(s) if s == "False" || s == "false" => Ok(false),
        _ => bail!("{what}: expected a boolean, found {v}"),
    }
}

/// Ultralytics' `make_divisible(x, 8)`: round channel counts up to a multiple of 8.
fn make_divisible(x: f64, divisor: usize) -> usize {
    ((x / divisor as f64).ceil() as usize) * divisor
}

/// Resolves a model config into a [`ModelPlan`].
///
/// `nc_override` replaces the config's class count (training on a new dataset); `scale_override`
/// picks the scale when the config has none (e.g. built from `yolo26s.yaml`).
pub fn resolve(cfg: &Value, nc_override: Option<usize>, scale_override: Option<&str>) -> Result<ModelPlan> {
    let nc = match nc_override {
        Some(n) => n,
        None => as_usize(cfg.get("nc").ok_or_else(|| anyhow!("model config has no 'nc'"))?, "nc")?,
    };
    if nc == 0 {
        bail!("model config: nc must be at least 1");
    }
    let reg_max = cfg.get("reg_max").map(|v| as_usize(v, "reg_max")).transpose()?.unwrap_or(16);
    if reg_max != 1 {
        bail!("model config: reg_max {reg_max} is not supported (YOLO26 uses reg_max 1)");
    }
    let end2end = cfg.get("end2end").map(|v| as_bool(v, "end2end")).transpose()?.unwrap_or(false);
    let scales = cfg.get("scales").and_then(Value::as_object);
    let scale = scale_override
        .map(str::to_string)
        .or_else(|| cfg.get("scale").and_then(Value::as_str).map(str::to_string))
        .or_else(|| scales.and_then(|s| s.keys().next().cloned()))
        .unwrap_or_else(|| "n".to_string());
    let (depth, width, max_channels) = match scales {
        Some(s) => {
            let row = s
                .get(&scale)
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow!("model config has no scale '{scale}'"))?;
            if row.len() != 3 {
                bail!("model config: scale '{scale}' must be [depth, width, max_channels]");
            }
            (as_f64(&row[0], "depth")?, as_f64(&row[1], "width")?, as_f64(&row[2], "max_channels")?)
        }
        None => (1.0, 1.0, f64::INFINITY),
    };

    let rows: Vec<&Value> = ["backbone", "head"]
        .iter()
        .map(|k| cfg.get(*k).and_then(Value::as_array).ok_or_else(|| anyhow!("model config has no '{k}' list")))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();

    let mut layers: Vec<LayerNode> = Vec::with_capacity(rows.len());
    let mut ch: Vec<usize> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let ctx = || format!("model config layer {i}");
        let row = row.as_array().filter(|r| r.len() == 4).ok_or_else(|| anyhow!("{}: expected [from, repeats, module, args]", ctx()))?;
        let from_raw: Vec<i64> = match &row[0] {
            Value::Array(a) => a.iter().map(|v| v.as_i64().ok_or_else(|| anyhow!("{}: bad 'from' {v}", ctx()))).collect::<Result<_>>()?,
            v => vec![v.as_i64().ok_or_else(|| anyhow!("{}: bad 'from' {v}", ctx()))?],
        };
        let from: Vec<usize> = from_raw
            .iter()
            .map(|&f| {
                let idx = if f < 0 { i as i64 + f } else { f };
                if i == 0 && f == -1 {
                    return Ok(usize::MAX); // the network input
                }
                if idx < 0 || idx >= i as i64 {
                    bail!("{}: 'from' {f} does not name an earlier layer", ctx());
                }
                Ok(idx as usize)
            })
            .collect::<Result<_>>()?;
        let ch_of = |f: usize| if f == usize::MAX { 3 } else { ch[f] };
        let repeats = as_usize(&row[1], "repeats").with_context(ctx)?;
        let n = if repeats > 1 { ((repeats as f64 * depth).round() as usize).max(1) } else { repeats };
        let module = row[2].as_str().ok_or_else(|| anyhow!("{}: module name must be a string", ctx()))?;
        let args: Vec<Value> = row[3].as_array().cloned().unwrap_or_default();
        let arg = |j: usize| args.get(j);
        let scale_ch = |c: usize| make_divisible((c as f64).min(max_channels) * width, 8);
        let c1 = from.first().map(|&f| ch_of(f)).unwrap_or(3);
        let single = |what: &str| -> Result<()> {
            if n != 1 {
                bail!("{}: {what} with repeats {n} is not supported", ctx());
            }
            Ok(())
        };
        let (spec, c_out) = match module {
            "Conv" => {
                single("Conv")?;
                let c2 = scale_ch(as_usize(arg(0).ok_or_else(|| anyhow!("{}: Conv needs channels", ctx()))?, "c2")?);
                let k = arg(1).map(|v| as_usize(v, "k")).transpose()?.unwrap_or(1);
                let s = arg(2).map(|v| as_usize(v, "s")).transpose()?.unwrap_or(1);
                if args.len() > 3 {
                    bail!("{}: Conv with padding/groups/dilation arguments is not supported", ctx());
                }
                (LayerSpec::Conv { c1, c2, k, s }, c2)
            }
            "C3k2" => {
                let c2 = scale_ch(as_usize(arg(0).ok_or_else(|| anyhow!("{}: C3k2 needs channels", ctx()))?, "c2")?);
                let mut c3k = arg(1).map(|v| as_bool(v, "c3k")).transpose()?.unwrap_or(false);
                if matches!(scale.as_str(), "m" | "l" | "x") {
                    c3k = true; // the reference forces C3k blocks for the larger scales
                }
                let e = arg(2).map(|v| as_f64(v, "e")).transpose()?.unwrap_or(0.5);
                let attn = arg(3).map(|v| as_bool(v, "attn")).transpose()?.unwrap_or(false);
                let g = arg(4).map(|v| as_usize(v, "g")).transpose()?.unwrap_or(1);
                if g != 1 {
                    bail!("{}: grouped C3k2 is not supported", ctx());
                }
                let shortcut = arg(5).map(|v| as_bool(v, "shortcut")).transpose()?.unwrap_or(true);
                (LayerSpec::C3k2 { c1, c2, n, c3k, e, attn, shortcut }, c2)
            }
            "SPPF" => {
                single("SPPF")?;
                let c2 = scale_ch(as_usize(arg(0).ok_or_else(|| anyhow!("{}: SPPF needs channels", ctx()))?, "c2")?);
                let k = arg(1).map(|v| as_usize(v, "k")).transpose()?.unwrap_or(5);
                if args.len() <= 2 {
                    bail!("{}: legacy SPPF (activated cv1) is not supported", ctx());
                }
                let pools = arg(2).map(|v| as_usize(v, "n")).transpose()?.unwrap_or(3);
                let shortcut = arg(3).map(|v| as_bool(v, "shortcut")).transpose()?.unwrap_or(false);
                (LayerSpec::Sppf { c1, c2, k, n: pools, shortcut }, c2)
            }
            "C2PSA" => {
                let c2 = scale_ch(as_usize(arg(0).ok_or_else(|| anyhow!("{}: C2PSA needs channels", ctx()))?, "c2")?);
                if c1 != c2 {
                    bail!("{}: C2PSA needs equal input and output channels ({c1} != {c2})", ctx());
                }
                let e = arg(1).map(|v| as_f64(v, "e")).transpose()?.unwrap_or(0.5);
                (LayerSpec::C2psa { c1, c2, n, e }, c2)
            }
            "nn.Upsample" | "Upsample" => {
                single("Upsample")?;
                let scale = arg(1).map(|v| as_usize(v, "scale_factor")).transpose()?.unwrap_or(2);
                if let Some(mode) = arg(2).and_then(Value::as_str) {
                    if mode != "nearest" {
                        bail!("{}: Upsample mode '{mode}' is not supported", ctx());
                    }
                }
                (LayerSpec::Upsample { scale }, c1)
            }
            "Concat" => {
                single("Concat")?;
                (LayerSpec::Concat, from.iter().map(|&f| ch_of(f)).sum())
            }
            "Detect" => {
                single("Detect")?;
                let chs: Vec<usize> = from.iter().map(|&f| ch_of(f)).collect();
                (LayerSpec::Detect { nc, reg_max, end2end, ch: chs }, 0)
            }
            other => bail!("{}: module '{other}' is not supported by ferroyolo", ctx()),
        };
        ch.push(c_out);
        layers.push(LayerNode { from, from_raw, spec, c_out });
    }
    match layers.last().map(|l| &l.spec) {
        Some(LayerSpec::Detect { .. }) => {}
        _ => bail!("model config: the last layer must be Detect"),
    }
    Ok(ModelPlan { nc, scale, layers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yolo26n_channels_match_the_reference_table() {
        let cfg = parse_yaml(YOLO26_YAML).unwrap();
        let plan = resolve(&cfg, None, Some("n")).unwrap();
        let outs: Vec<usize> = plan.layers.iter().map(|l| l.c_out).collect();
        assert_eq!(
            outs,
            vec![16, 32, 64, 64, 128, 128, 128, 256, 256, 256, 256, 256, 384, 128, 128, 256, 64, 64, 192, 128, 128, 384, 256, 0]
        );
        match &plan.layers[23].spec {
            LayerSpec::Detect { ch, nc, .. } => {
                assert_eq!(ch, &vec![64, 128, 256]);
                assert_eq!(*nc, 80);
            }
            s => panic!("unexpected {s:?}"),
        }
        assert!(matches!(plan.layers[2].spec, LayerSpec::C3k2 { c3k: false, n: 1, .. }));
    }

    #[test]
    fn larger_scales_force_c3k_and_repeat() {
        let cfg = parse_yaml(YOLO26_YAML).unwrap();
        let plan = resolve(&cfg, None, Some("l")).unwrap();
        assert!(matches!(plan.layers[2].spec, LayerSpec::C3k2 { c3k: true, n: 2, .. }));
        assert!(matches!(plan.layers[22].spec, LayerSpec::C3k2 { n: 1, attn: true, .. }));
        assert_eq!(plan.layers[7].c_out, 512);
        assert!(resolve(&cfg, None, Some("q")).is_err());
    }

    #[test]
    fn scale_letter_from_file_names() {
        assert_eq!(scale_from_name("yolo26s.yaml").as_deref(), Some("s"));
        assert_eq!(scale_from_name("/a/yolo26x.pt").as_deref(), Some("x"));
        assert_eq!(scale_from_name("model.pt"), None);
    }
}
