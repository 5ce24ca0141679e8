//! Writing Ultralytics `.pt` checkpoints: re-saved fixtures read back identically (tensors,
//! module attributes, names, config), every scale and class count, the training state
//! (model, EMA, optimizer) bit-exactly, the container layout, and atomic writes.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use ferroyolo::model::init::random_checkpoint;
use ferroyolo::train::optim::{OptimConfig, Optimizer, OptimizerKind, OptimizerState, ParamSpec};
use ferroyolo::weights::pickle::{self, Global, Node};
use ferroyolo::weights::{
    load_training_state, save_pt, Checkpoint, DType, ModelWeights, StopperState, TensorKind, TensorValues,
    TrainingCheckpoint,
};
use half::f16;
use serde_json::json;

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

/// Same names, shapes and kinds; values exactly equal after `round` (identity for fp32, f16
/// rounding for fp16 files); stored dtype `dtype` for floats. The file is always in torch's
/// state_dict order; `want` may be in another (random_checkpoint records load order).
fn assert_same_tensors(ours: &Checkpoint, want: &[(String, ferroyolo::weights::StoredTensor)], dtype: DType, what: &str) {
    assert_eq!(ours.tensors.len(), want.len(), "{what}");
    let want: std::collections::HashMap<&str, &ferroyolo::weights::StoredTensor> =
        want.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for (name, t) in &ours.tensors {
        let w = want.get(name.as_str()).unwrap_or_else(|| panic!("{what}: unexpected {name}"));
        assert_eq!(t.shape, w.shape, "{what}: {name}");
        assert_eq!(t.kind, w.kind, "{what}: {name}");
        match (&t.values, &w.values) {
            (TensorValues::F32(a), TensorValues::F32(b)) => {
                assert_eq!(t.dtype, dtype, "{what}: {name}");
                let same = a.iter().zip(b.iter()).all(|(x, y)| {
                    let y = if dtype == DType::F16 { f16::from_f32(*y).to_f32() } else { *y };
                    x.to_bits() == y.to_bits()
                });
                assert!(same && a.len() == b.len(), "{what}: {name} values differ");
            }
            (TensorValues::I64(a), TensorValues::I64(b)) => {
                assert_eq!(t.dtype, DType::I64, "{what}: {name}");
                assert_eq!(a, b, "{what}: {name}");
            }
            _ => panic!("{what}: {name}: value types differ"),
        }
    }
}

fn names(c: &Checkpoint) -> Vec<&str> {
    c.tensors.iter().map(|(n, _)| n.as_str()).collect()
}

/// A `.pt` file's unpickled `data.pkl`.
fn data_pkl(path: &Path) -> pickle::Pickle {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let name = zip.file_names().map(|n| n.unwrap().into_owned()).find(|n| n.ends_with("/data.pkl")).unwrap();
    let mut data = Vec::new();
    zip.by_name(&name).unwrap().read_to_end(&mut data).unwrap();
    pickle::unpickle(&data).unwrap()
}

/// The qualified names of every global in a `.pt` file's pickle.
fn globals(path: &Path) -> BTreeSet<String> {
    data_pkl(path)
        .nodes()
        .filter_map(|n| match n {
            Node::Global(Global::Class(c)) => Some(c.clone()),
            Node::Global(Global::OrderedDict) => Some("collections.OrderedDict".into()),
            Node::Global(Global::Set) => Some("builtins.set".into()),
            Node::Global(Global::RebuildTensorV2) => Some("torch._utils._rebuild_tensor_v2".into()),
            Node::Global(Global::RebuildParameter) => Some("torch._utils._rebuild_parameter".into()),
            Node::Global(Global::StorageType(d)) => Some(format!("torch.{}", d.storage_class())),
            Node::Global(other) => Some(format!("{other:?}")),
            _ => None,
        })
        .collect()
}

#[test]
fn resaved_fixtures_read_back_identically_in_both_layouts() {
    let dir = ferroyolo::fixtures_or_skip!();
    let tmp = TempDir::new("ptw-fixtures");
    for model in ["yolo26n-coco", "yolo26n-rand-nc3", "yolo26s-rand"] {
        let src = Checkpoint::load_pt(dir.join(format!("weights/{model}.pt"))).unwrap();
        let w = ModelWeights::from_checkpoint(&src);
        // The reference's own release file reads as a finished run without training state.
        let reference = load_training_state(dir.join(format!("weights/{model}.pt"))).unwrap();
        assert_eq!((reference.epoch, reference.updates, reference.best_fitness), (-1, None, None));
        assert!(reference.ema.is_none() && reference.optimizer.is_none());
        assert_eq!(reference.model.as_ref().unwrap().tensors, src.tensors);

        // Release layout, fp16: the fixtures are fp16, so values are unchanged.
        let release = tmp.0.join(format!("{model}-release.pt"));
        save_pt(&release, &TrainingCheckpoint::release(w, &src.train_args)).unwrap();
        let back = Checkpoint::load(&release).unwrap();
        assert_same_tensors(&back, &src.tensors, DType::F16, model);
        assert_eq!(names(&back), names(&src), "{model}: state_dict order");
        assert_eq!(back.names, src.names, "{model}");
        assert_eq!(back.stride, src.stride, "{model}");
        assert_eq!(back.model_yaml, src.model_yaml, "{model}");
        assert_eq!(back.train_args, src.train_args, "{model}");
        assert_eq!(back.parameter_count(), src.parameter_count(), "{model}");
        assert!(!back.from_ema);
        assert_eq!(back.metadata["epoch"], -1);
        // Every module has the class and plain attributes of the reference's pickle. (The
        // coco fixture's Detect also caches `shape` from a past forward pass, which a fresh model
        // lacks; the random fixtures were saved from a model in training mode, without `task`.)
        assert_eq!(back.modules.len(), src.modules.len(), "{model}");
        let random = model.contains("rand");
        for (a, b) in back.modules.iter().zip(&src.modules) {
            let (mut got, mut want) = (a.clone(), b.clone());
            want.attrs.as_object_mut().unwrap().remove("shape");
            if random {
                assert_eq!(want.attrs["training"], true);
                for m in [&mut got, &mut want] {
                    m.attrs.as_object_mut().unwrap().remove("training");
                    if m.path.is_empty() {
                        m.attrs.as_object_mut().unwrap().remove("task");
                    }
                }
            }
            assert_eq!(got, want, "{model}: module '{}'", a.path);
        }

        // Training layout, fp32, model + EMA: Checkpoint::load takes the EMA, as Ultralytics does.
        let mut ema_tensors = src.tensors.clone();
        for (_, t) in &mut ema_tensors {
            if let TensorValues::F32(v) = &mut t.values {
                v.iter_mut().for_each(|x| *x = *x * 0.5 + 1e-3);
            }
        }
        let ema = ModelWeights { tensors: &ema_tensors, ..w };
        let training = tmp.0.join(format!("{model}-last.pt"));
        let ckpt = TrainingCheckpoint { model: Some(w), ema: Some(ema), updates: Some(42), ..TrainingCheckpoint::training(3, &src.train_args) };
        save_pt(&training, &ckpt).unwrap();
        let back = Checkpoint::load(&training).unwrap();
        assert!(back.from_ema);
        assert_same_tensors(&back, &ema_tensors, DType::F32, model);
        let state = load_training_state(&training).unwrap();
        assert_same_tensors(state.model.as_ref().unwrap(), &src.tensors, DType::F32, model);
        assert_same_tensors(state.ema.as_ref().unwrap(), &ema_tensors, DType::F32, model);
        assert_eq!((state.epoch, state.updates), (3, Some(42)));

        if let Some(out) = std::env::var_os("FERROYOLO_PT_WRITE_OUT") {
            // For tools/check_ultralytics_load.py: the release file, and a training file whose
            // EMA is the fixture's weights in fp32, with a MuSGD optimizer state.
            let out = Path::new(&out);
            std::fs::create_dir_all(out).unwrap();
            std::fs::copy(&release, out.join(format!("{model}-release.pt"))).unwrap();
            let opt = trained_optimizer(&src, OptimizerKind::MuSgd);
            let ckpt = TrainingCheckpoint {
                model: Some(w),
                ema: Some(w),
                updates: Some(7),
                optimizer: Some(opt.to_py().unwrap()),
                train_metrics: Some(json!({"fitness": 0.5})),
                ..TrainingCheckpoint::training(0, &src.train_args)
            };
            save_pt(out.join(format!("{model}-last.pt")), &ckpt).unwrap();
        }
    }
}

#[test]
fn release_files_use_exactly_the_reference_globals_and_container_layout() {
    let dir = ferroyolo::fixtures_or_skip!();
    let tmp = TempDir::new("ptw-layout");
    let src = Checkpoint::load_pt(dir.join("weights/yolo26n-coco.pt")).unwrap();
    let path = tmp.0.join("best.pt");
    save_pt(&path, &TrainingCheckpoint::release(ModelWeights::from_checkpoint(&src), &src.train_args)).unwrap();

    // The 27 globals of a released yolo26n checkpoint (YOLO26.md 2.2), and no others.
    let expected: BTreeSet<String> = [
        "builtins.set", "collections.OrderedDict", "torch.FloatStorage", "torch.HalfStorage", "torch.LongStorage",
        "torch._utils._rebuild_parameter", "torch._utils._rebuild_tensor_v2",
        "torch.nn.modules.activation.SiLU", "torch.nn.modules.batchnorm.BatchNorm2d",
        "torch.nn.modules.container.ModuleList", "torch.nn.modules.container.Sequential",
        "torch.nn.modules.conv.Conv2d", "torch.nn.modules.linear.Identity", "torch.nn.modules.pooling.MaxPool2d",
        "torch.nn.modules.upsampling.Upsample", "ultralytics.nn.modules.block.Attention",
        "ultralytics.nn.modules.block.Bottleneck", "ultralytics.nn.modules.block.C2PSA",
        "ultralytics.nn.modules.block.C3k", "ultralytics.nn.modules.block.C3k2",
        "ultralytics.nn.modules.block.PSABlock", "ultralytics.nn.modules.block.SPPF",
        "ultralytics.nn.modules.conv.Concat", "ultralytics.nn.modules.conv.Conv", "ultralytics.nn.modules.conv.DWConv",
        "ultralytics.nn.modules.head.Detect", "ultralytics.nn.tasks.DetectionModel",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(globals(&path), expected);
    // Module instances as in the reference's pickle: 454, of which 3 SiLU (one shared by every
    // Conv, one in each deep-copied one2one branch).
    let pkl = data_pkl(&path);
    let classes: Vec<&str> = pkl.nodes().filter_map(|n| if let Node::Object(o) = n { Some(o.class.as_str()) } else { None }).collect();
    assert_eq!(classes.len(), 454);
    assert_eq!(classes.iter().filter(|c| c.ends_with(".SiLU")).count(), 3);

    // Container: stored entries under `best/`, in torch's order, data 64-byte aligned.
    let bytes = std::fs::read(&path).unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).unwrap();
    let names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
    let mut order: Vec<String> = (0..zip.len()).map(|i| zip.by_index(i).unwrap().name().unwrap().into_owned()).collect();
    assert_eq!(order.len(), names.len());
    let storages = order.len() - 6;
    assert_eq!(storages, 712, "708 state_dict tensors + Detect stride/anchors/strides + model stride");
    let head: Vec<String> = order.drain(..4).collect();
    assert_eq!(head, ["best/data.pkl", "best/.format_version", "best/.storage_alignment", "best/byteorder"]);
    let tail: Vec<String> = order.drain(storages..).collect();
    assert_eq!(tail, ["best/version", "best/.data/serialization_id"]);
    assert_eq!(order, (0..storages).map(|i| format!("best/data/{i}")).collect::<Vec<_>>());
    for i in 0..zip.len() {
        let mut e = zip.by_index(i).unwrap();
        let name = e.name().unwrap().into_owned();
        assert_eq!(e.compression(), zip::CompressionMethod::Stored, "{name}");
        assert_eq!(e.data_start().unwrap() % 64, 0, "{name}");
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap(); // checks the CRC
        match name.rsplit('/').next().unwrap() {
            ".format_version" => assert_eq!(data, b"1"),
            ".storage_alignment" => assert_eq!(data, b"64"),
            "byteorder" => assert_eq!(data, b"little"),
            "version" => assert_eq!(data, b"3\n"),
            "serialization_id" => assert!(data.len() == 40 && data.iter().all(u8::is_ascii_digit)),
            _ => {}
        }
    }
    // The same input gives the same bytes (with the date fixed).
    let fixed = |sub: &str| {
        let p = tmp.0.join(sub);
        std::fs::create_dir_all(&p).unwrap();
        let p = p.join("best.pt");
        let w = ModelWeights::from_checkpoint(&src);
        let c = TrainingCheckpoint { date: Some("2026-01-01T00:00:00".into()), ..TrainingCheckpoint::release(w, &src.train_args) };
        save_pt(&p, &c).unwrap();
        std::fs::read(p).unwrap()
    };
    assert_eq!(fixed("a"), fixed("b"));
}

#[test]
fn every_scale_and_class_count_round_trips_exactly() {
    let tmp = TempDir::new("ptw-scales");
    for (scale, nc) in [("n", 80), ("n", 1), ("s", 7), ("m", 80), ("l", 2), ("x", 80)] {
        let ckpt = random_checkpoint(scale, nc, None, 11).unwrap();
        let path = tmp.0.join(format!("yolo26{scale}-{nc}.pt"));
        let w = ModelWeights::from_checkpoint(&ckpt);
        let args = json!({"task": "detect", "model": format!("yolo26{scale}.yaml")});
        save_pt(&path, &TrainingCheckpoint { half: false, ..TrainingCheckpoint::release(w, &args) }).unwrap();
        let back = Checkpoint::load(&path).unwrap();
        assert_same_tensors(&back, &ckpt.tensors, DType::F32, &format!("yolo26{scale} nc={nc}"));
        assert_eq!(back.names, ckpt.names);
        assert_eq!(back.parameter_count(), ckpt.parameter_count());
        let detect = back.modules.iter().find(|m| m.class.ends_with(".Detect")).unwrap();
        assert_eq!((detect.attrs["nc"].as_u64(), detect.attrs["no"].as_u64()), (Some(nc as u64), Some(nc as u64 + 4)));
        // The file builds a working model.
        ferroyolo::Yolo::from_checkpoint(back).unwrap();
    }
}

#[test]
fn class_branch_wider_than_nc_keeps_its_width() {
    // Transfer learning from 80 classes to 3 keeps the source's 80-wide class branch and only
    // recreates the final 1x1 convolutions (YOLO26.md 5): 2,534,858 parameters.
    let mut ckpt = random_checkpoint("n", 80, None, 5).unwrap();
    for (name, t) in &mut ckpt.tensors {
        if name.contains("cv3.") && (name.ends_with(".2.weight") || name.ends_with(".2.bias")) {
            let per_class: usize = t.shape[1..].iter().product();
            t.shape[0] = 3;
            if let TensorValues::F32(v) = &mut t.values {
                v.truncate(3 * per_class);
            }
        }
    }
    ckpt.names = vec!["person".into(), "car".into(), "widget".into()];
    ckpt.model_yaml["nc"] = 3.into();
    assert_eq!(ckpt.parameter_count(), 2_534_858);
    let tmp = TempDir::new("ptw-transfer");
    let path = tmp.0.join("ft.pt");
    save_pt(&path, &TrainingCheckpoint::release(ModelWeights::from_checkpoint(&ckpt), &json!(null))).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert_eq!(back.parameter_count(), 2_534_858);
    let attrs = |path: &str| &back.modules.iter().find(|m| m.path == path).unwrap().attrs;
    assert_eq!(attrs("model.23")["nc"], 3);
    assert_eq!(attrs("model.23.cv3.0.2")["in_channels"], 80);
    assert_eq!(attrs("model.23.cv3.0.2")["out_channels"], 3);
    assert_eq!(attrs("model.23.cv3.1.1.0.conv")["groups"], 80);
    ferroyolo::Yolo::from_checkpoint(back).unwrap();
}

/// An optimizer over yolo26n's parameters after a few steps with made-up gradients.
fn trained_optimizer(ckpt: &Checkpoint, kind: OptimizerKind) -> OptimizerState {
    let specs: Vec<ParamSpec> = ckpt
        .tensors
        .iter()
        .filter(|(_, t)| t.kind == TensorKind::Parameter)
        .map(|(n, t)| ParamSpec::from_name(n.clone(), t.shape.clone()))
        .collect();
    let cfg = OptimConfig { kind, batches_per_epoch: 4, ..Default::default() };
    let mut opt = Optimizer::new(&cfg, &specs);
    let mut values: Vec<Vec<f32>> = specs.iter().map(|s| vec![0.01; s.numel()]).collect();
    for step in 0..2u32 {
        let grads: Vec<Vec<f32>> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (0..s.numel()).map(|j| ((i * 31 + j * 7 + step as usize) % 17) as f32 / 17.0 - 0.5).collect())
            .collect();
        let mut batch: Vec<(&str, &mut [f32], &[f32])> = specs
            .iter()
            .zip(values.iter_mut())
            .zip(&grads)
            .map(|((s, v), g)| (s.name.as_str(), v.as_mut_slice(), g.as_slice()))
            .collect();
        opt.step(&mut batch);
    }
    opt.state_dict()
}

/// Every float of an optimizer state, as bits.
fn optimizer_bits(s: &OptimizerState) -> (Vec<u64>, Vec<u32>) {
    let hyper = s.groups.iter().flat_map(|g| [g.lr, g.initial_lr, g.momentum, g.beta2, g.weight_decay]).map(f64::to_bits);
    let buffers = s.buffers.iter().flat_map(|(_, b)| b.named().flat_map(|(_, v)| v.iter().map(|x| x.to_bits())).collect::<Vec<_>>());
    (hyper.collect(), buffers.collect())
}

#[test]
fn training_state_round_trips_bit_exactly() {
    let ckpt = random_checkpoint("n", 4, None, 3).unwrap();
    let mut ema = ckpt.tensors.clone();
    for (_, t) in &mut ema {
        if let TensorValues::F32(v) = &mut t.values {
            v.iter_mut().enumerate().for_each(|(i, x)| *x += (i as f32).sin() * 1e-4);
        }
    }
    let args = json!({"task": "detect", "epochs": 10, "lr0": 0.01, "data": "coco8.yaml", "names": null});
    let tmp = TempDir::new("ptw-train");
    for kind in [OptimizerKind::MuSgd, OptimizerKind::AdamW, OptimizerKind::Sgd] {
        let opt = trained_optimizer(&ckpt, kind);
        assert!(opt.buffers.iter().any(|(_, b)| !b.is_empty()));
        let path = tmp.0.join("last.pt");
        let model = ModelWeights::from_checkpoint(&ckpt);
        let metrics = json!({"metrics/mAP50-95(B)": 0.123_456_789_012_345_6, "fitness": 0.1 + 0.2});
        let written = TrainingCheckpoint {
            best_fitness: Some(0.1 + 0.2),
            stopper: Some(StopperState { best_fitness: Some(0.3), best_epoch: 5 }),
            model: Some(model),
            ema: Some(ModelWeights { tensors: &ema, ..model }),
            updates: Some(1234),
            optimizer: Some(opt.to_py().unwrap()),
            train_metrics: Some(metrics.clone()),
            train_results: Some(json!({"epoch": [1, 2], "lr/pg0": [0.001, 0.002]})),
            ..TrainingCheckpoint::training(7, &args)
        };
        save_pt(&path, &written).unwrap();
        let state = load_training_state(&path).unwrap();
        assert_eq!(state.epoch, 7);
        assert_eq!(state.best_fitness.map(f64::to_bits), Some((0.1f64 + 0.2).to_bits()));
        assert_eq!(state.stopper, Some(StopperState { best_fitness: Some(0.3), best_epoch: 5 }));
        assert_eq!(state.updates, Some(1234));
        assert_eq!(state.train_args, args);
        assert_eq!(state.train_metrics, metrics);
        assert_eq!(state.train_results["lr/pg0"], json!([0.001, 0.002]));
        assert_eq!(state.metadata["license"], "AGPL-3.0 License (https://ultralytics.com/license)");
        assert_same_tensors(state.model.as_ref().unwrap(), &ckpt.tensors, DType::F32, "model");
        assert_same_tensors(state.ema.as_ref().unwrap(), &ema, DType::F32, "ema");
        let restored = OptimizerState::from_py(state.optimizer.as_ref().unwrap()).unwrap();
        assert!(restored == opt, "{kind}: optimizer state differs");
        // PartialEq on floats accepts -0 == 0: compare the bits too.
        assert_eq!(optimizer_bits(&restored), optimizer_bits(&opt), "{kind}: not bit-exact");
    }
}

#[test]
fn optimizer_pickle_form_is_checked_on_read() {
    let ckpt = random_checkpoint("n", 2, None, 1).unwrap();
    let opt = trained_optimizer(&ckpt, OptimizerKind::Sgd);
    let py = opt.to_py().unwrap();
    assert_eq!(OptimizerState::from_py(&py).unwrap(), opt);
    let mut broken = py.clone();
    if let ferroyolo::weights::PyValue::Dict(entries) = &mut broken {
        entries.retain(|(k, _)| k.as_str() != Some("param_groups"));
    }
    let err = OptimizerState::from_py(&broken).unwrap_err().to_string();
    assert!(err.contains("param_groups"), "{err}");
    assert!(OptimizerState::from_py(&ferroyolo::weights::PyValue::None).is_err());
}

#[test]
fn bad_weights_are_refused_with_the_tensor_named() {
    let mut ckpt = random_checkpoint("n", 3, None, 2).unwrap();
    let tmp = TempDir::new("ptw-bad");
    let path = tmp.0.join("bad.pt");
    let removed = ckpt.tensors.remove(10).0;
    let err = save_pt(&path, &TrainingCheckpoint::release(ModelWeights::from_checkpoint(&ckpt), &json!(null))).unwrap_err();
    assert!(err.to_string().contains(&removed), "{err}");
    let mut ckpt = random_checkpoint("n", 3, None, 2).unwrap();
    let extra = ckpt.tensors[0].clone();
    ckpt.tensors.push(("model.99.conv.weight".into(), extra.1));
    let err = save_pt(&path, &TrainingCheckpoint::release(ModelWeights::from_checkpoint(&ckpt), &json!(null))).unwrap_err();
    assert!(err.to_string().contains("model.99.conv.weight"), "{err}");
    assert!(!path.exists());
}

#[test]
fn failed_writes_leave_the_existing_file_and_no_temporary() {
    let ckpt = random_checkpoint("n", 3, None, 2).unwrap();
    let tmp = TempDir::new("ptw-atomic");
    let path = tmp.0.join("last.pt");
    let null = json!(null);
    save_pt(&path, &TrainingCheckpoint::release(ModelWeights::from_checkpoint(&ckpt), &null)).unwrap();
    let before = std::fs::read(&path).unwrap();
    let listing = || std::fs::read_dir(&tmp.0).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>();
    assert_eq!(listing(), ["last.pt"]);

    // A tensor whose values do not fill its shape: refused before anything is written.
    let mut broken = ckpt.clone();
    let last = broken.tensors.iter_mut().rev().find(|(n, _)| n.ends_with(".2.weight")).unwrap();
    if let TensorValues::F32(v) = &mut last.1.values {
        v.pop();
    }
    let err = save_pt(&path, &TrainingCheckpoint::release(ModelWeights::from_checkpoint(&broken), &null)).unwrap_err();
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(listing(), ["last.pt"]);

    // A failure after the whole file was written (the final rename onto a non-empty folder
    // fails): the temporary file is removed.
    let occupied = tmp.0.join("taken.pt");
    std::fs::create_dir_all(occupied.join("inside")).unwrap();
    let err = save_pt(&occupied, &TrainingCheckpoint::release(ModelWeights::from_checkpoint(&ckpt), &null)).unwrap_err();
    assert!(err.to_string().contains("taken.pt"), "{err}");
    let mut names = listing();
    names.sort();
    assert_eq!(names, ["last.pt", "taken.pt"]);
    assert!(occupied.join("inside").is_dir());

    // A folder that does not exist: a clear error, nothing created.
    let missing = tmp.0.join("no/such/dir/last.pt");
    let err = save_pt(&missing, &TrainingCheckpoint::release(ModelWeights::from_checkpoint(&ckpt), &null)).unwrap_err();
    assert!(err.to_string().contains("no/such/dir"), "{err}");
    let mut names = listing();
    names.sort();
    assert_eq!(names, ["last.pt", "taken.pt"]);
}
