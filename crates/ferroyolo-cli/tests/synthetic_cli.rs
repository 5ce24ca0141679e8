//! `ferroyolo synthetic` end to end: it writes a dataset the library loads, with the options
//! taken in both argument styles, reproducibly, and refuses to overwrite a folder it did not write.

use std::path::Path;

use ferroyolo::data::dataset::{scan_split, DatasetConfig};

mod common;
use common::{ferroyolo, temp_dir, text};

#[test]
fn writes_a_loadable_dataset_and_says_where() {
    let dir = temp_dir("synthetic-write");
    let out = ferroyolo(&["synthetic", "out=shapes", "train=10", "--val", "4", "imgsz=96", "seed=2", "classes=2", "objects=1,2", "format=png", "threads=2"], &dir);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let shown = Path::new("shapes").join("data.yaml").display().to_string();
    assert!(stdout.contains("10 train and 4 val") && stdout.contains(&format!("data={shown}")), "{stdout}");
    let yaml = dir.join("shapes/data.yaml");
    assert!(stdout.contains("circle, square"), "{stdout}");

    let cfg = DatasetConfig::load(&yaml).unwrap();
    assert_eq!(cfg.names, ["circle", "square"]);
    let train = scan_split(&cfg, "train").unwrap();
    let val = scan_split(&cfg, "val").unwrap();
    assert_eq!((train.images.len(), val.images.len(), train.issues.len() + val.issues.len()), (10, 4, 0));
    assert!(train.images.iter().all(|im| im.shape == (96, 96) && (1..=2).contains(&im.boxes.len())));
    assert!(train.images[0].image.extension().unwrap() == "png");

    // Same options again (other thread count): the previous dataset is replaced by identical files.
    let label = dir.join("shapes/labels/train/00003.txt");
    let before = std::fs::read(&label).unwrap();
    let again = ferroyolo(&["synthetic", "out=shapes", "train=10", "val=4", "imgsz=96", "seed=2", "classes=2", "objects=1,2", "format=png", "threads=1"], &dir);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(std::fs::read(&label).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refuses_foreign_folders_and_bad_options() {
    let dir = temp_dir("synthetic-refuse");
    std::fs::create_dir_all(dir.join("mine")).unwrap();
    std::fs::write(dir.join("mine/a.txt"), "keep").unwrap();
    let out = ferroyolo(&["synthetic", "out=mine", "train=2", "val=1", "imgsz=64"], &dir);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("mine") && stderr.contains("not empty"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.join("mine")).unwrap().count(), 1);

    for (args, what) in [
        (vec!["synthetic", "out=x", "val=0"], "at least 1"),
        (vec!["synthetic", "out=x", "classes=9"], "classes=9"),
        (vec!["synthetic", "out=x", "objects=1,2,3"], "min,max"),
        (vec!["synthetic", "out=x", "format=gif"], "gif"),
    ] {
        let out = ferroyolo(&args, &dir);
        let stderr = text(&out.stderr);
        assert!(!out.status.success() && stderr.contains(what), "{args:?}: {stderr}");
    }
    assert!(!dir.join("x").exists(), "a refused spec writes nothing");
    std::fs::remove_dir_all(&dir).unwrap();
}
