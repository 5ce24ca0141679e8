//! Loading the reference `.pt` fixtures: names, shapes, kinds, dtypes and values against the
//! reference state_dict listing, metadata, and the safetensors round trip.

use std::path::{Path, PathBuf};

use ferroyolo::weights::{Checkpoint, CheckpointError, DType, TensorKind, TensorValues};

const MODELS: [&str; 4] = ["yolo26n-coco", "yolo26n-rand", "yolo26s-rand", "yolo26n-rand-nc3"];

fn weights(dir: &Path, model: &str) -> PathBuf {
    dir.join("weights").join(format!("{model}.pt"))
}

fn load(dir: &Path, model: &str) -> Checkpoint {
    let path = weights(dir, model);
    Checkpoint::load_pt(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// A private scratch folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("ferroyolo-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn all_fixtures_load_with_the_reference_parameter_counts() {
    let dir = ferroyolo::fixtures_or_skip!();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference/summary.json")).unwrap()).unwrap();
    for model in MODELS {
        let ckpt = load(&dir, model);
        let expected = summary[model]["params"].as_u64().unwrap_or_else(|| panic!("{model}: no params in summary"));
        assert_eq!(ckpt.parameter_count() as u64, expected, "{model}");
        // 708 state_dict entries for every YOLO26 detect model (the class count only changes shapes).
        assert_eq!(ckpt.tensors.len(), 708, "{model}");
        assert_eq!(ckpt.stride, [8.0, 16.0, 32.0], "{model}");
        assert!(!ckpt.from_ema, "{model}: released checkpoints have ema=None");
        assert_eq!(ckpt.source, weights(&dir, model));
        for (name, t) in &ckpt.tensors {
            assert_eq!(t.values.len(), t.numel(), "{model} {name}");
        }
    }
}

/// One row of `yolo26n_state_dict.tsv`.
struct Row {
    name: String,
    shape: Vec<usize>,
    kind: TensorKind,
    dtype: DType,
}

fn reference_rows(dir: &Path) -> Vec<Row> {
    let tsv = dir.join("../reference/yolo26n_state_dict.tsv");
    let text = std::fs::read_to_string(&tsv).unwrap_or_else(|e| panic!("{}: {e}", tsv.display()));
    text.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 6, "{line}");
            let shape = if cols[2] == "scalar" { vec![] } else { cols[2].split('x').map(|d| d.parse().unwrap()).collect() };
            let kind = match cols[4] {
                "param" => TensorKind::Parameter,
                "buffer" => TensorKind::Buffer,
                other => panic!("kind {other}"),
            };
            let dtype = match cols[5] {
                "float16" => DType::F16,
                "float32" => DType::F32,
                "int64" => DType::I64,
                other => panic!("dtype {other}"),
            };
            Row { name: cols[1].to_owned(), shape, kind, dtype }
        })
        .collect()
}

#[test]
fn coco_state_dict_matches_the_reference_listing() {
    let dir = ferroyolo::fixtures_or_skip!();
    let rows = reference_rows(&dir);
    assert_eq!(rows.len(), 708);
    for model in ["yolo26n-coco", "yolo26n-rand"] {
        let ckpt = load(&dir, model);
        assert_eq!(ckpt.tensors.len(), rows.len(), "{model}");
        for (i, ((name, t), row)) in ckpt.tensors.iter().zip(&rows).enumerate() {
            assert_eq!(name, &row.name, "{model}: entry {i}");
            assert_eq!(t.shape, row.shape, "{model}: {name}");
            assert_eq!(t.kind, row.kind, "{model}: {name}");
            assert_eq!(t.dtype, row.dtype, "{model}: {name}");
            assert_eq!(t.dtype.is_float(), matches!(t.values, TensorValues::F32(_)), "{model}: {name}");
        }
    }
}

#[test]
fn tensor_values_are_decoded() {
    let dir = ferroyolo::fixtures_or_skip!();
    let ckpt = load(&dir, "yolo26n-coco");
    // Values read independently from the archive with Python's struct module ('<e' = float16).
    let w = ckpt.tensor("model.0.conv.weight").unwrap();
    let v = w.values.as_f32().unwrap();
    let first: Vec<f64> = v[..4].iter().map(|&x| f64::from(x)).collect();
    assert_eq!(first, [-2.6015625, -0.37158203125, 2.97265625, -6.69140625]);
    let sum: f64 = v.iter().map(|&x| f64::from(x)).sum();
    assert!((sum - -33.044921875).abs() < 1e-9, "{sum}");
    let nbt = ckpt.tensor("model.0.bn.num_batches_tracked").unwrap();
    assert_eq!(nbt.shape, Vec::<usize>::new());
    assert_eq!(nbt.values, TensorValues::I64(vec![0]));
    assert!(ckpt.tensor("no.such.tensor").is_none());
    // Rebuilt BatchNorm statistics are real: variances positive and not all equal.
    let var = ckpt.tensor("model.0.bn.running_var").unwrap().values.as_f32().unwrap().to_vec();
    assert!(var.iter().all(|&x| x > 0.0) && var.iter().any(|&x| x != var[0]), "{var:?}");
}

#[test]
fn names_config_and_metadata() {
    let dir = ferroyolo::fixtures_or_skip!();
    let coco = load(&dir, "yolo26n-coco");
    assert_eq!(coco.names.len(), 80);
    assert_eq!(coco.names[0], "person");
    assert_eq!(coco.names[5], "bus");
    assert_eq!(coco.names[79], "toothbrush");
    let yaml = &coco.model_yaml;
    assert_eq!(yaml["scale"], "n");
    assert_eq!(yaml["nc"], 80);
    assert!(yaml["head"].is_array() && yaml["backbone"].is_array(), "{yaml}");
    assert_eq!(yaml["scales"]["s"], serde_json::json!([0.5, 0.5, 1024]));
    assert_eq!(coco.train_args["task"], "detect");
    assert_eq!(coco.metadata["version"], "8.4.190");
    assert_eq!(coco.metadata["epoch"], -1);
    assert!(coco.metadata.get("date").is_some_and(|d| d.is_string()));
    for key in ["model", "ema", "optimizer", "train_args"] {
        assert!(coco.metadata.get(key).is_none(), "{key} must not be in metadata");
    }

    let nc3 = load(&dir, "yolo26n-rand-nc3");
    assert_eq!(nc3.names, ["panel", "dirt", "crack"]);
    assert_eq!(nc3.model_yaml["nc"], 3);
    assert_eq!(nc3.tensor("model.23.cv3.0.2.bias").unwrap().shape, [3]);

    let s = load(&dir, "yolo26s-rand");
    assert_eq!(s.model_yaml["scale"], "s");
    assert_eq!(s.tensor("model.0.conv.weight").unwrap().shape, [32, 3, 3, 3]);
}

#[test]
fn module_tree_and_attributes() {
    let dir = ferroyolo::fixtures_or_skip!();
    let ckpt = load(&dir, "yolo26n-coco");
    let module = |path: &str| {
        ckpt.modules.iter().find(|m| m.path == path).unwrap_or_else(|| panic!("no module '{path}'"))
    };
    // 454 module instances (one NEWOBJ/BUILD each in data.pkl), but every Conv block registers
    // the one shared SiLU instance as its `act`: listed under each of its 556 paths, root first.
    assert_eq!(ckpt.modules.len(), 556);
    assert_eq!(module("model.1.act").class, "torch.nn.modules.activation.SiLU");
    // The last Conv of a PSA feed-forward has no activation.
    assert_eq!(module("model.22.m.0.1.ffn.1.act").class, "torch.nn.modules.linear.Identity");
    assert_eq!(ckpt.modules[0].path, "");
    assert_eq!(ckpt.modules[0].class, "ultralytics.nn.tasks.DetectionModel");
    assert_eq!(ckpt.modules[1].path, "model");
    assert_eq!(ckpt.modules[1].class, "torch.nn.modules.container.Sequential");
    assert_eq!(ckpt.modules[2].path, "model.0");

    let conv = module("model.0.conv");
    assert_eq!(conv.class, "torch.nn.modules.conv.Conv2d");
    assert_eq!(conv.attrs["stride"], serde_json::json!([2, 2]));
    assert_eq!(conv.attrs["padding"], serde_json::json!([1, 1]));
    assert_eq!(conv.attrs["groups"], 1);
    let bn = module("model.0.bn");
    assert_eq!(bn.class, "torch.nn.modules.batchnorm.BatchNorm2d");
    assert_eq!(bn.attrs["eps"], 0.001);
    let layer = module("model.0");
    assert_eq!(layer.class, "ultralytics.nn.modules.conv.Conv");
    assert_eq!(layer.attrs["type"], "ultralytics.nn.modules.conv.Conv");
    assert_eq!(layer.attrs["i"], 0);
    assert_eq!(layer.attrs["f"], -1);
    let detect = module("model.23");
    assert_eq!(detect.class, "ultralytics.nn.modules.head.Detect");
    assert_eq!(detect.attrs["nc"], 80);
    assert_eq!(detect.attrs["f"], serde_json::json!([16, 19, 22]));
    // Tensors (Detect.stride, anchors) and private fields are not attributes.
    assert!(detect.attrs.get("stride").is_none() && detect.attrs.get("anchors").is_none());
    assert!(detect.attrs.get("_parameters").is_none());
    let up = module("model.11");
    assert_eq!(up.attrs["mode"], "nearest");
    assert_eq!(up.attrs["scale_factor"], 2.0);
}

#[test]
fn safetensors_round_trip() {
    let dir = ferroyolo::fixtures_or_skip!();
    let tmp = TempDir::new("roundtrip");
    for model in ["yolo26n-coco", "yolo26n-rand-nc3"] {
        let ckpt = load(&dir, model);
        let out = tmp.0.join(format!("{model}.safetensors"));
        ckpt.save_safetensors(&out).unwrap();
        // Overwriting an existing file works too (atomic rename), and leaves no temporary files.
        ckpt.save_safetensors(&out).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(&tmp.0).unwrap().filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        for back in [Checkpoint::load_safetensors(&out).unwrap(), Checkpoint::load(&out).unwrap()] {
            assert_eq!(back.source, out);
            assert_eq!(back.tensors.len(), ckpt.tensors.len());
            for ((n1, t1), (n2, t2)) in ckpt.tensors.iter().zip(&back.tensors) {
                assert_eq!(n1, n2);
                assert_eq!(t1, t2, "{model}: {n1}");
            }
            assert_eq!(back.modules, ckpt.modules);
            assert_eq!(back.model_yaml, ckpt.model_yaml);
            assert_eq!(back.names, ckpt.names);
            assert_eq!(back.stride, ckpt.stride);
            assert_eq!(back.train_args, ckpt.train_args);
            assert_eq!(back.metadata, ckpt.metadata);
            assert_eq!(back.from_ema, ckpt.from_ema);
            assert_eq!(back.parameter_count(), ckpt.parameter_count());
        }
    }
    // `load` also picks the .pt reader by content.
    let pt = Checkpoint::load(weights(&dir, "yolo26n-rand-nc3")).unwrap();
    assert_eq!(pt.names, ["panel", "dirt", "crack"]);
}

#[test]
fn foreign_safetensors_is_refused_clearly() {
    let tmp = TempDir::new("foreign");
    let path = tmp.0.join("plain.safetensors");
    let data = [0u8; 8];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data).unwrap();
    std::fs::write(&path, safetensors::serialize([("w", view)], None).unwrap()).unwrap();
    for result in [Checkpoint::load_safetensors(&path), Checkpoint::load(&path)] {
        let err = result.unwrap_err();
        assert!(matches!(err, CheckpointError::NotFerroyolo { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with(&path.display().to_string()) && msg.contains("ferroyolo metadata"), "{msg}");
    }
    let garbage = tmp.0.join("garbage.bin");
    std::fs::write(&garbage, b"this is not a checkpoint at all").unwrap();
    let err = Checkpoint::load(&garbage).unwrap_err();
    assert!(err.to_string().contains("neither a PyTorch zip checkpoint"), "{err}");
    let missing = tmp.0.join("missing.pt");
    let err = Checkpoint::load(&missing).unwrap_err();
    assert!(err.to_string().starts_with(&missing.display().to_string()), "{err}");
}
