//! Tests of the training pipeline: geometry of every transform, the reference's box filter,
//! determinism across worker counts, close_mosaic, and (ignored, run by hand) coco8 pictures and
//! timings.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use super::rng::Rng;
use super::transform::{self, PerspectiveConfig, PixelBox, Sample};
use super::{AugmentConfig, Batch, TrainLoader};
use crate::data::dataset::{scan_images, LabelBox, LabeledSplit};

/// A fresh, empty temporary folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferroyolo-augment-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A distinct, saturated colour per object id, far from grey 114 and from the backgrounds.
fn colour(id: usize) -> [u8; 3] {
    const C: [[u8; 3]; 12] = [
        [230, 20, 20],
        [20, 220, 30],
        [30, 40, 235],
        [240, 230, 10],
        [250, 20, 240],
        [10, 230, 240],
        [250, 140, 0],
        [140, 0, 250],
        [0, 140, 70],
        [255, 255, 255],
        [0, 0, 0],
        [160, 250, 140],
    ];
    C[id]
}

/// An axis-aligned rectangle `[x0, x1) x [y0, y1)` of object `id` in an image.
#[derive(Clone, Copy, Debug)]
struct Rect {
    id: usize,
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
}

/// Writes a synthetic dataset: each image a background with coloured rectangles (one colour
/// and one class per rectangle), labelled exactly; returns the scanned split.
/// A synthetic image: (width, height), background colour, rectangles.
type ImageSpec = ((u32, u32), [u8; 3], Vec<Rect>);

fn write_dataset(dir: &Path, images: &[ImageSpec], nc: usize) -> LabeledSplit {
    let (img_dir, lbl_dir) = (dir.join("images/train"), dir.join("labels/train"));
    std::fs::create_dir_all(&img_dir).unwrap();
    std::fs::create_dir_all(&lbl_dir).unwrap();
    let mut files = Vec::new();
    for (k, ((w, h), bg, rects)) in images.iter().enumerate() {
        let mut img = RgbImage::from_pixel(*w, *h, Rgb(*bg));
        let mut text = String::new();
        for r in rects {
            for y in r.y0..r.y1 {
                for x in r.x0..r.x1 {
                    img.put_pixel(x, y, Rgb(colour(r.id)));
                }
            }
            let (wf, hf) = (*w as f32, *h as f32);
            let cx = (r.x0 + r.x1) as f32 / 2.0 / wf;
            let cy = (r.y0 + r.y1) as f32 / 2.0 / hf;
            text += &format!("{} {cx} {cy} {} {}\n", r.id, (r.x1 - r.x0) as f32 / wf, (r.y1 - r.y0) as f32 / hf);
        }
        let path = img_dir.join(format!("im{k:02}.png"));
        img.save(&path).unwrap();
        std::fs::write(lbl_dir.join(format!("im{k:02}.txt")), text).unwrap();
        files.push(path);
    }
    let names: Vec<String> = (0..nc).map(|i| format!("c{i}")).collect();
    let split = scan_images(&files, &names, "train").unwrap();
    assert!(split.issues.is_empty(), "{:?}", split.issues);
    assert_eq!(split.images.len(), images.len());
    split
}

/// Six images of different shapes with one or two rectangles each; rectangles keep at least
/// 10 px from the image edges and from each other.
fn rect_dataset(dir: &Path) -> LabeledSplit {
    let r = |id, x0, y0, x1, y1| Rect { id, x0, y0, x1, y1 };
    let images = vec![
        ((200, 150), [60, 60, 60], vec![r(0, 20, 20, 90, 70), r(1, 120, 60, 180, 130)]),
        ((120, 160), [90, 40, 40], vec![r(2, 15, 20, 100, 60), r(3, 30, 90, 70, 145)]),
        ((180, 180), [40, 90, 40], vec![r(4, 40, 40, 140, 140)]),
        ((90, 140), [40, 40, 90], vec![r(5, 12, 12, 78, 50), r(6, 20, 70, 60, 125)]),
        ((250, 100), [100, 100, 30], vec![r(7, 15, 15, 110, 85), r(8, 140, 30, 230, 70)]),
        ((160, 120), [30, 100, 100], vec![r(9, 30, 25, 130, 95)]),
    ];
    write_dataset(dir, &images, 12)
}

fn no_hsv(imgsz: usize) -> AugmentConfig {
    AugmentConfig { imgsz, hsv_h: 0.0, hsv_s: 0.0, hsv_v: 0.0, ..AugmentConfig::default() }
}

fn px(img: &RgbImage, x: i64, y: i64) -> Option<[u8; 3]> {
    (x >= 0 && y >= 0 && x < img.width() as i64 && y < img.height() as i64).then(|| img.get_pixel(x as u32, y as u32).0)
}

/// Checks one image's boxes against its pixels: inside each box (away from its blended edges)
/// every pixel has the object's colour, and just outside each edge that is not the image border
/// none has. Returns how many boxes were big enough to check.
fn check_boxes_enclose_rectangles(img: &RgbImage, boxes: &[(usize, [f32; 4])]) -> usize {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let mut checked = 0;
    for &(class, b) in boxes {
        let [cx, cy, bw, bh] = b;
        let (x1, y1, x2, y2) = ((cx - bw / 2.0) * w, (cy - bh / 2.0) * h, (cx + bw / 2.0) * w, (cy + bh / 2.0) * h);
        assert!(x1 >= -0.01 && y1 >= -0.01 && x2 <= w + 0.01 && y2 <= h + 0.01, "box outside the image: {b:?}");
        assert!(x2 - x1 > 2.0 && y2 - y1 > 2.0, "box the filter should have dropped: {b:?}");
        if x2 - x1 < 8.0 || y2 - y1 < 8.0 {
            continue;
        }
        checked += 1;
        let c = colour(class);
        let inset = 3.0;
        for y in (y1 + inset).ceil() as i64..(y2 - inset).floor() as i64 {
            for x in (x1 + inset).ceil() as i64..(x2 - inset).floor() as i64 {
                assert_eq!(px(img, x, y), Some(c), "class {class} box {:?} pixel ({x}, {y})", (x1, y1, x2, y2));
            }
        }
        // A ring 3 px outside the box holds none of the object's colour.
        let (ox1, oy1, ox2, oy2) =
            ((x1 - inset).floor() as i64, (y1 - inset).floor() as i64, (x2 + inset).ceil() as i64, (y2 + inset).ceil() as i64);
        for x in ox1..=ox2 {
            for y in [oy1, oy2] {
                assert_ne!(px(img, x, y), Some(c), "class {class} colour outside its box at ({x}, {y})");
            }
        }
        for y in oy1..=oy2 {
            for x in [ox1, ox2] {
                assert_ne!(px(img, x, y), Some(c), "class {class} colour outside its box at ({x}, {y})");
            }
        }
    }
    checked
}

fn batch_boxes(batch: &Batch, k: usize) -> Vec<(usize, [f32; 4])> {
    batch.targets_of(k).collect()
}

#[test]
fn mosaic_perspective_flip_boxes_enclose_their_rectangles() {
    let dir = temp_dir("geometry");
    let split = rect_dataset(&dir);
    for cfg in [no_hsv(160), AugmentConfig { fliplr: 1.0, flipud: 1.0, ..no_hsv(160) }] {
        let mut loader = TrainLoader::new(split.clone(), cfg, 3, 0, 7).unwrap();
        let mut checked = 0;
        for epoch in 0..6 {
            loader.set_epoch(epoch);
            for batch in loader.iter() {
                let batch = batch.unwrap();
                assert_eq!(batch.images.shape(), [batch.len(), 3, 160, 160]);
                for k in 0..batch.len() {
                    checked += check_boxes_enclose_rectangles(&batch.image(k), &batch_boxes(&batch, k));
                }
            }
        }
        assert!(checked > 40, "only {checked} boxes checked");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn flip_probabilities_mirror_the_same_sample() {
    // Flips are the last draws of a sample, made whatever their probability, so the same seed
    // with fliplr 1 (flipud 1) gives exactly the mirror image of the fliplr 0 sample.
    let dir = temp_dir("flip-mirror");
    let split = rect_dataset(&dir);
    let plain = AugmentConfig { fliplr: 0.0, ..AugmentConfig { imgsz: 96, ..AugmentConfig::default() } };
    let get = |cfg: AugmentConfig| epoch_batches(&TrainLoader::new(split.clone(), cfg, 6, 0, 3).unwrap()).remove(0);
    let base = get(plain);
    let lr = get(AugmentConfig { fliplr: 1.0, ..plain });
    let ud = get(AugmentConfig { flipud: 1.0, ..plain });
    assert!(!base.targets.is_empty());
    for k in 0..base.len() {
        assert_eq!(image::imageops::flip_horizontal(&base.image(k)), lr.image(k));
        assert_eq!(image::imageops::flip_vertical(&base.image(k)), ud.image(k));
    }
    for ((a, b), c) in base.targets.iter().zip(&lr.targets).zip(&ud.targets) {
        let close = |p: [f32; 4], q: [f32; 4]| p.iter().zip(&q).all(|(u, v)| (u - v).abs() < 1e-6);
        let x = a.2;
        assert_eq!((a.0, a.1), (b.0, b.1));
        assert!(close(b.2, [1.0 - x[0], x[1], x[2], x[3]]), "{a:?} {b:?}");
        assert!(close(c.2, [x[0], 1.0 - x[1], x[2], x[3]]), "{a:?} {c:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rotated_sheared_boxes_enclose_the_rotated_rectangle_tightly() {
    // A 100x80 image with one rectangle, rotated, sheared and slightly projected onto a canvas
    // large enough that nothing is cut: every pixel of the rectangle's colour lies in the box,
    // and the box is no larger than the rectangle's corners need.
    let mut img = RgbImage::from_pixel(100, 80, Rgb([60, 60, 60]));
    let (x0, y0, x1, y1) = (20u32, 15u32, 70u32, 55u32);
    for y in y0..y1 {
        for x in x0..x1 {
            img.put_pixel(x, y, Rgb(colour(0)));
        }
    }
    let boxes = [PixelBox { class_id: 0, xyxy: [x0 as f32, y0 as f32, x1 as f32, y1 as f32] }];
    for perspective in [0.0, 0.0003] {
        let cfg = PerspectiveConfig { degrees: 40.0, translate: 0.0, scale: 0.3, shear: 10.0, perspective };
        for seed in 0..20 {
            let mut rng = Rng::keyed(&[seed]);
            let out = transform::random_perspective(&img, &boxes, &cfg, &mut |a, b| rng.uniform(a, b), (240, 240));
            assert_eq!(out.boxes.len(), 1);
            let [bx1, by1, bx2, by2] = out.boxes[0].xyxy;
            let (mut lo, mut hi) = ([i64::MAX; 2], [i64::MIN; 2]);
            for (x, y, p) in out.img.enumerate_pixels() {
                if p.0 == colour(0) {
                    let (x, y) = (x as i64, y as i64);
                    lo = [lo[0].min(x), lo[1].min(y)];
                    hi = [hi[0].max(x), hi[1].max(y)];
                }
            }
            // Pixel centres of the exact colour are inside the box ...
            assert!(lo[0] as f32 >= bx1 - 0.5 && lo[1] as f32 >= by1 - 0.5, "seed {seed}: {lo:?} vs {:?}", out.boxes[0]);
            assert!(hi[0] as f32 <= bx2 + 0.5 && hi[1] as f32 <= by2 + 0.5, "seed {seed}: {hi:?} vs {:?}", out.boxes[0]);
            // ... and reach to within a few pixels of each edge (blending eats about one pixel).
            let (lo, hi) = (lo.map(|v| v as f32), hi.map(|v| v as f32));
            let gaps = [lo[0] - bx1, lo[1] - by1, bx2 - hi[0], by2 - hi[1]];
            assert!(gaps.iter().all(|&g| g < 4.0), "seed {seed}: box larger than the rectangle: gaps {gaps:?}");
        }
    }
}

#[test]
fn flips_mirror_boxes_with_the_pixels() {
    let mut img = RgbImage::from_pixel(40, 30, Rgb([0, 0, 0]));
    for y in 5..12 {
        for x in 3..10 {
            img.put_pixel(x, y, Rgb([255, 0, 0]));
        }
    }
    let boxes = vec![PixelBox { class_id: 2, xyxy: [3.0, 5.0, 10.0, 12.0] }];
    let mut s = Sample { img: img.clone(), boxes: boxes.clone() };
    transform::flip_lr(&mut s);
    assert_eq!(s.boxes[0].xyxy, [30.0, 5.0, 37.0, 12.0]);
    assert_eq!(s.img.get_pixel(30, 5).0, [255, 0, 0]);
    assert_eq!(s.img.get_pixel(36, 11).0, [255, 0, 0]);
    assert_eq!(s.img.get_pixel(29, 5).0, [0, 0, 0]);
    assert_eq!(s.img.get_pixel(37, 5).0, [0, 0, 0]);
    let mut s = Sample { img, boxes };
    transform::flip_ud(&mut s);
    assert_eq!(s.boxes[0].xyxy, [3.0, 18.0, 10.0, 25.0]);
    assert_eq!(s.img.get_pixel(3, 18).0, [255, 0, 0]);
    assert_eq!(s.img.get_pixel(9, 24).0, [255, 0, 0]);
    assert_eq!(s.img.get_pixel(3, 17).0, [0, 0, 0]);
    assert_eq!(s.img.get_pixel(3, 25).0, [0, 0, 0]);
    assert_eq!(s.boxes[0].class_id, 2);
}

#[test]
fn box_filter_follows_the_reference_rules() {
    use transform::box_candidate as keep;
    let before = [0.0, 0.0, 100.0, 100.0];
    assert!(keep(&before, &[10.0, 10.0, 90.0, 90.0]));
    // Width and height must exceed 2 pixels.
    assert!(!keep(&before, &[0.0, 0.0, 2.0, 50.0]));
    assert!(!keep(&before, &[0.0, 0.0, 50.0, 2.0]));
    assert!(keep(&[0.0, 0.0, 3.0, 3.0], &[0.0, 0.0, 2.01, 2.01]));
    // More than 10 % of the (scaled) original area must remain: 1000 of 10000 is not enough.
    assert!(!keep(&before, &[0.0, 0.0, 10.0, 100.0]));
    assert!(keep(&before, &[0.0, 0.0, 10.5, 100.0]));
    // Aspect ratio under 100, either way round.
    assert!(!keep(&[0.0, 0.0, 500.0, 3.0], &[0.0, 0.0, 400.0, 4.0]));
    assert!(keep(&[0.0, 0.0, 500.0, 3.0], &[0.0, 0.0, 396.0, 4.0]));
    assert!(!keep(&[0.0, 0.0, 3.0, 500.0], &[0.0, 0.0, 4.0, 400.0]));

    // Through transform_boxes: the original box is scaled before the area test, so a box that
    // halves with a 0.5 scale keeps its whole area, while one cut by the border loses it.
    let m = [[0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 1.0]];
    let boxes = [
        PixelBox { class_id: 0, xyxy: [10.0, 10.0, 50.0, 30.0] },   // -> 5..25 x 5..15, kept
        PixelBox { class_id: 1, xyxy: [190.0, 10.0, 260.0, 30.0] }, // -> 95..130, clipped to 95..100: 5/35 > 0.1 kept
        PixelBox { class_id: 2, xyxy: [194.0, 10.0, 300.0, 30.0] }, // -> 97..150, clipped to 97..100: 3 px wide, 3/53 < 0.1
        PixelBox { class_id: 3, xyxy: [10.0, 10.0, 14.0, 50.0] },   // -> 2 px wide: dropped
        PixelBox { class_id: 4, xyxy: [300.0, 300.0, 340.0, 340.0] }, // entirely outside: dropped
    ];
    let out = transform::transform_boxes(&boxes, &m, 0.5, false, (100, 100));
    let kept: Vec<(usize, [f32; 4])> = out.iter().map(|b| (b.class_id, b.xyxy)).collect();
    assert_eq!(kept, vec![(0, [5.0, 5.0, 25.0, 15.0]), (1, [95.0, 5.0, 100.0, 15.0])]);
}

#[test]
fn mosaic_places_tiles_around_the_centre_and_clips_labels() {
    let imgsz = 64;
    let tile = |v: u8, w, h| RgbImage::from_pixel(w, h, Rgb([v, v, v]));
    let (a, b, c, d) = (tile(10, 50, 40), tile(20, 80, 30), tile(30, 40, 90), tile(40, 70, 70));
    let full = [LabelBox { class_id: 0, xywh: [0.5, 0.5, 1.0, 1.0] }];
    let lab = |k| [LabelBox { class_id: k, xywh: [0.5, 0.5, 1.0, 1.0] }];
    let (lb, lc, ld) = (lab(1), lab(2), lab(3));
    let s = transform::mosaic4(imgsz, (60, 50), [(&a, &full), (&b, &lb), (&c, &lc), (&d, &ld)]);
    assert_eq!(s.img.dimensions(), (128, 128));
    // Top-left tile ends at the centre, top-right starts there (cut by the canvas at 128), ...
    assert_eq!(s.img.get_pixel(59, 49).0, [10; 3]);
    assert_eq!(s.img.get_pixel(10, 10).0, [10; 3]);
    assert_eq!(s.img.get_pixel(9, 9).0, [114; 3]);
    assert_eq!(s.img.get_pixel(60, 49).0, [20; 3]);
    assert_eq!(s.img.get_pixel(127, 20).0, [20; 3]);
    assert_eq!(s.img.get_pixel(60, 19).0, [114; 3]);
    assert_eq!(s.img.get_pixel(59, 50).0, [30; 3]);
    assert_eq!(s.img.get_pixel(20, 127).0, [30; 3]);
    assert_eq!(s.img.get_pixel(19, 50).0, [114; 3]);
    assert_eq!(s.img.get_pixel(60, 50).0, [40; 3]);
    assert_eq!(s.img.get_pixel(127, 119).0, [40; 3]);
    assert_eq!(s.img.get_pixel(127, 120).0, [114; 3]);
    let boxes: Vec<(usize, [f32; 4])> = s.boxes.iter().map(|b| (b.class_id, b.xyxy)).collect();
    assert_eq!(
        boxes,
        vec![
            (0, [10.0, 10.0, 60.0, 50.0]),
            (1, [60.0, 20.0, 128.0, 50.0]),  // 60..140 clipped
            (2, [20.0, 50.0, 60.0, 128.0]),  // 50..140 clipped
            (3, [60.0, 50.0, 128.0, 120.0]), // 60..130 clipped
        ]
    );

    // A centre at the canvas corner leaves the top-left image entirely outside: its box is gone.
    let s = transform::mosaic4(imgsz, (0, 0), [(&a, &full), (&b, &lb), (&c, &lc), (&d, &ld)]);
    assert!(s.boxes.iter().all(|b| b.class_id != 0));
    assert_eq!(s.img.get_pixel(0, 0).0, [40; 3]);
}

#[test]
fn mosaic_centre_and_matrix_follow_the_reference_ranges() {
    let mut rng = Rng::keyed(&[1]);
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    for _ in 0..2000 {
        let (x, y) = transform::mosaic_centre(640, &mut |a, b| rng.uniform(a, b));
        lo = lo.min(x.min(y));
        hi = hi.max(x.max(y));
    }
    assert!((320..330).contains(&lo) && (950..960).contains(&hi), "{lo} {hi}");

    // No translation or scale range: the input centre lands on the output centre, scale 1.
    let cfg = PerspectiveConfig { degrees: 0.0, translate: 0.0, scale: 0.0, shear: 0.0, perspective: 0.0 };
    let (m, s) = transform::random_matrix(&cfg, &mut |a, b| rng.uniform(a, b), (1280, 1280), (640, 640));
    assert_eq!(s, 1.0);
    assert_eq!(super::warp::apply(&m, 640.0, 640.0, false), (320.0, 320.0));
    // A 90 degree rotation turns +x into -y (counter-clockwise on screen).
    let cfg = PerspectiveConfig { degrees: 90.0, ..cfg };
    loop {
        let (m, _) = transform::random_matrix(&cfg, &mut |a, b| rng.uniform(a, b), (100, 100), (100, 100));
        let (x, y) = super::warp::apply(&m, 60.0, 50.0, false);
        let angle = (-(y - 50.0)).atan2(x - 50.0).to_degrees(); // counter-clockwise from +x
        assert!((x - 50.0).hypot(y - 50.0) > 9.99);
        if angle > 80.0 {
            assert!(angle <= 90.0 + 1e-9);
            break;
        }
    }
}

#[test]
fn long_side_resize_follows_load_image() {
    let img = RgbImage::new(1000, 500);
    assert_eq!(transform::resize_long_side(img, 640).dimensions(), (640, 320));
    let img = RgbImage::new(500, 333);
    assert_eq!(transform::resize_long_side(img, 640).dimensions(), (640, 427)); // ceil(426.24)
    let img = RgbImage::new(333, 640);
    assert_eq!(transform::resize_long_side(img, 640).dimensions(), (333, 640));
}

/// All batches of the loader's current epoch, unwrapped.
fn epoch_batches(loader: &TrainLoader) -> Vec<Batch> {
    loader.iter().map(|b| b.unwrap()).collect()
}

fn same_batches(a: &[Batch], b: &[Batch]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.images.shape() == y.images.shape() && x.images.data() == y.images.data() && x.targets == y.targets && x.paths == y.paths
        })
}

#[test]
fn same_seed_gives_identical_batches_whatever_the_workers() {
    let dir = temp_dir("determinism");
    let split = rect_dataset(&dir);
    let cfg = AugmentConfig { imgsz: 96, ..AugmentConfig::default() };
    let mut reference = TrainLoader::new(split.clone(), cfg, 4, 0, 123).unwrap();
    assert_eq!(reference.len(), 2); // 6 images in batches of 4: the last one has 2
    for epoch in [0, 1, 5] {
        reference.set_epoch(epoch);
        let want = epoch_batches(&reference);
        assert_eq!(want.iter().map(Batch::len).collect::<Vec<_>>(), vec![4, 2]);
        assert!(want.iter().any(|b| !b.targets.is_empty()));
        for workers in [1, 3] {
            let mut l = TrainLoader::new(split.clone(), cfg, 4, workers, 123).unwrap();
            l.set_epoch(epoch);
            assert!(same_batches(&epoch_batches(&l), &want), "workers={workers} epoch={epoch}");
            // The same epoch again, after another one (a resumed run), and with the recently-used
            // image cache instead of the full one.
            l.set_epoch(epoch + 1);
            let _ = epoch_batches(&l);
            l.set_cache_all(!l.caches_all_images());
            l.set_epoch(epoch);
            assert!(same_batches(&epoch_batches(&l), &want), "workers={workers} epoch={epoch} repeated");
        }
    }
    // Different epochs shuffle differently; a different seed changes the samples.
    let order = |l: &mut TrainLoader, e| {
        l.set_epoch(e);
        epoch_batches(l).into_iter().flat_map(|b| b.paths).collect::<Vec<_>>()
    };
    let orders: Vec<Vec<PathBuf>> = (0..4).map(|e| order(&mut reference, e)).collect();
    assert!(orders.windows(2).all(|w| w[0] != w[1]), "{orders:?}");
    for o in &orders {
        let mut sorted = o.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 6, "every image once per epoch");
    }
    let mut other = TrainLoader::new(split, cfg, 4, 2, 124).unwrap();
    reference.set_epoch(0);
    assert!(!same_batches(&epoch_batches(&other), &epoch_batches(&reference)));
    // Dropping an iterator early stops its workers without waiting for the epoch.
    other.set_epoch(3);
    let mut it = other.iter();
    assert!(it.next().unwrap().is_ok());
    drop(it);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn batch_is_capped_at_the_dataset_and_bad_images_are_errors() {
    let dir = temp_dir("errors");
    let split = rect_dataset(&dir);
    let l = TrainLoader::new(split.clone(), no_hsv(64), 16, 2, 0).unwrap();
    assert_eq!((l.batch_size(), l.len()), (6, 1));
    // One image deleted after the scan: the batches that need it fail, the others do not.
    std::fs::remove_file(&split.images[2].image).unwrap();
    let mut l = TrainLoader::new(split, no_hsv(64), 1, 2, 0).unwrap();
    l.close_mosaic(); // each batch then needs its own image only
    let results: Vec<_> = l.iter().collect();
    assert_eq!(results.len(), 6);
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    let err = results.into_iter().find_map(|r| r.err()).unwrap();
    assert!(format!("{err:#}").contains("im02.png"), "{err:#}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn close_mosaic_gives_single_image_samples() {
    // Solid images, each its own colour and one box covering it.
    let dir = temp_dir("close-mosaic");
    let images: Vec<_> = (0..8)
        .map(|k| {
            (
                (60 + 10 * k as u32, 90 - 5 * k as u32),
                colour(k),
                vec![Rect { id: k, x0: 0, y0: 0, x1: 60 + 10 * k as u32, y1: 90 - 5 * k as u32 }],
            )
        })
        .collect();
    let split = write_dataset(&dir, &images, 12);
    let mut loader = TrainLoader::new(split, no_hsv(64), 4, 1, 5).unwrap();
    // Number of distinct image colours present in each sample of an epoch.
    let colours_per_sample = |loader: &TrainLoader| -> Vec<usize> {
        epoch_batches(loader)
            .iter()
            .flat_map(|b| (0..b.len()).map(move |k| b.image(k)))
            .map(|img| (0..8).filter(|&k| img.pixels().filter(|p| p.0 == colour(k)).count() > 4).count())
            .collect()
    };
    let mut mosaic = Vec::new();
    for e in 0..3 {
        loader.set_epoch(e);
        mosaic.extend(colours_per_sample(&loader));
    }
    assert!(mosaic.iter().filter(|&&n| n >= 2).count() >= 8, "{mosaic:?}");
    assert!(loader.config().mosaic == 1.0);
    loader.close_mosaic();
    assert!(loader.config().mosaic == 0.0);
    for e in 3..6 {
        loader.set_epoch(e);
        assert!(colours_per_sample(&loader).iter().all(|&n| n == 1));
        for b in epoch_batches(&loader) {
            for k in 0..b.len() {
                let boxes = batch_boxes(&b, k);
                assert_eq!(boxes.len(), 1, "one image, one box");
                check_boxes_enclose_rectangles(&b.image(k), &boxes);
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Draws a batch's boxes on its images and saves them as one PNG grid.
fn save_batch_grid(batch: &Batch, names: &[String], path: &Path) {
    use crate::output::annotate::{draw_detections, BoxLabel};
    let [n, _, h, w] = batch.images.shape();
    let cols = n.min(4);
    let rows = n.div_ceil(cols);
    let mut grid = RgbImage::from_pixel((cols * w) as u32, (rows * h) as u32, Rgb([255, 255, 255]));
    for k in 0..n {
        let mut img = batch.image(k);
        let boxes: Vec<(usize, [f32; 4])> = batch.targets_of(k).collect();
        let labels: Vec<BoxLabel> = boxes
            .iter()
            .map(|(c, [cx, cy, bw, bh])| {
                let (wf, hf) = (w as f32, h as f32);
                BoxLabel {
                    xyxy: [(cx - bw / 2.0) * wf, (cy - bh / 2.0) * hf, (cx + bw / 2.0) * wf, (cy + bh / 2.0) * hf],
                    class_id: *c,
                    label: &names[*c],
                }
            })
            .collect();
        draw_detections(&mut img, &labels);
        image::imageops::replace(&mut grid, &img, ((k % cols) * w) as i64, ((k / cols) * h) as i64);
    }
    grid.save(path).unwrap();
}

/// Writes a few augmented coco8 batches with their boxes to the temp folder, for a person to
/// compare with Ultralytics' `train_batch*.jpg`. Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn coco8_mosaics_to_png() {
    let fixtures = crate::fixtures_or_skip!();
    let cfg = crate::data::dataset::DatasetConfig::load(fixtures.join("coco8/data.yaml")).unwrap();
    let split = crate::data::dataset::scan_split(&cfg, "train").unwrap();
    let names = split.names.clone();
    let mut loader = TrainLoader::new(split, AugmentConfig::default(), 16, 2, 0).unwrap();
    for epoch in 0..3 {
        loader.set_epoch(epoch);
        for (b, batch) in loader.iter().enumerate() {
            let path = std::env::temp_dir().join(format!("ferroyolo_train_batch_e{epoch}_{b}.png"));
            save_batch_grid(&batch.unwrap(), &names, &path);
            eprintln!("wrote {}", path.display());
        }
    }
    loader.close_mosaic();
    loader.set_epoch(3);
    let batch = loader.iter().next().unwrap().unwrap();
    let path = std::env::temp_dir().join("ferroyolo_train_batch_closed.png");
    save_batch_grid(&batch, &names, &path);
    eprintln!("wrote {}", path.display());
}

/// Time to prepare batches of coco8 images (repeated to fill the batch) at a few sizes and
/// worker counts. Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn batch_timings() {
    let fixtures = crate::fixtures_or_skip!();
    let cfg = crate::data::dataset::DatasetConfig::load(fixtures.join("coco8/data.yaml")).unwrap();
    let mut split = crate::data::dataset::scan_split(&cfg, "train").unwrap();
    // 64 images (coco8's four, repeated) so that batches of 16 do not exhaust an epoch.
    let base = split.images.clone();
    while split.images.len() < 64 {
        split.images.extend(base.iter().cloned());
    }
    for (imgsz, batch) in [(320, 8), (640, 16)] {
        for workers in [0, 1, 2] {
            for all in [true, false] {
                let aug = AugmentConfig { imgsz, ..AugmentConfig::default() };
                let mut loader = TrainLoader::new(split.clone(), aug, batch, workers, 0).unwrap();
                loader.set_cache_all(all);
                // Warm the cache with one epoch when caching everything.
                if all {
                    let _ = epoch_batches(&loader);
                }
                loader.set_epoch(1);
                let t = std::time::Instant::now();
                let mut n = 0;
                for b in loader.iter() {
                    b.unwrap();
                    n += 1;
                }
                let per = t.elapsed().as_secs_f64() / n as f64;
                eprintln!(
                    "imgsz {imgsz} batch {batch} workers {workers} cache {}: {:.1} ms per batch ({n} batches)",
                    if all { "all (warm)" } else { "recent" },
                    per * 1e3
                );
            }
        }
    }
}

/// Time of each stage of one 640 mosaic sample. Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn stage_timings() {
    let fixtures = crate::fixtures_or_skip!();
    let cfg = crate::data::dataset::DatasetConfig::load(fixtures.join("coco8/data.yaml")).unwrap();
    let split = crate::data::dataset::scan_split(&cfg, "train").unwrap();
    let time = |name: &str, f: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        for _ in 0..10 {
            f();
        }
        eprintln!("{name}: {:.2} ms", t.elapsed().as_secs_f64() * 100.0);
    };
    let mut imgs = Vec::new();
    time("decode + resize (4 images)", &mut || {
        imgs = split.images.iter().map(|im| transform::load_resized(&im.image, 640).unwrap()).collect();
    });
    let tiles = |imgs: &[RgbImage]| -> Sample {
        let l: &[LabelBox] = &split.images[0].boxes;
        transform::mosaic4(640, (600, 700), [(&imgs[0], l), (&imgs[1], l), (&imgs[2], l), (&imgs[3], l)])
    };
    let mut m = tiles(&imgs);
    time("mosaic canvas", &mut || m = tiles(&imgs));
    let cfg = AugmentConfig::default().perspective_config();
    let mut out = m.clone();
    time("random perspective", &mut || {
        out = transform::random_perspective(&m.img, &m.boxes, &cfg, &mut |a, b| Rng::keyed(&[1]).uniform(a, b), (640, 640))
    });
    let mut img = out.img.clone();
    time("hsv", &mut || super::hsv::apply(&mut img, [0.01, 0.3, -0.2]));
    let mut v = Vec::new();
    time("chw f32", &mut || {
        v.clear();
        crate::data::letterbox::extend_chw_f32(&img, &mut v)
    });
}

/// Output of the reference (Ultralytics 8.4.190, OpenCV 5.0) on coco8's four training images
/// with scripted random draws (`random.random` and `np.random.uniform` patched to return them),
/// through its own `Mosaic`, `RandomPerspective`, `RandomHSV` and `RandomFlip`.
mod reference_run {
    /// Mosaic of images 0-3, centre draws (0.21, 0.77); perspective draws (0.5, 0.5, 0.5, 0.9, 0.5,
    /// 0.5, 0.3, 0.8) with the default settings; HSV draws (0.4, -0.6, 0.8); horizontal flip.
    pub const MOSAIC_BOXES: &[(usize, [f64; 4])] = &[
        (45, [143.0624, 0.0000, 640.0000, 88.9421]),
        (50, [208.6235, 0.0000, 640.0000, 90.0902]),
        (23, [0.0000, 0.6860, 30.5857, 77.9520]),
        (58, [357.1638, 141.4276, 640.0000, 595.1958]),
        (75, [435.2556, 316.1339, 640.0000, 589.4843]),
        (22, [0.0000, 126.0840, 103.4561, 640.0000]),
    ];
    /// FNV-1a of the whole RGB image.
    pub const MOSAIC_FNV: u64 = 0x3232_f26d_58ff_6c7b;
    /// Pixels at `(6 i + 7, 37 i mod 640)`, i < 97.
    #[rustfmt::skip]
    pub const MOSAIC_PIXELS: &[[u8; 3]] = &[
        [60, 48, 26], [147, 133, 87], [233, 205, 158], [163, 183, 98], [221, 190, 155], [168, 146, 146], [255, 240, 234], [109, 82, 70], [217, 205, 210],
        [44, 49, 51], [139, 151, 141], [249, 249, 186], [153, 162, 96], [159, 182, 106], [121, 139, 74], [137, 150, 96], [64, 73, 36], [248, 249, 245],
        [78, 90, 139], [112, 130, 161], [92, 108, 83], [67, 88, 61], [83, 97, 73], [85, 106, 76], [104, 132, 90], [87, 118, 80], [191, 209, 162],
        [88, 121, 79], [75, 99, 64], [56, 83, 47], [62, 88, 58], [86, 114, 101], [248, 255, 254], [253, 255, 254], [246, 246, 246], [255, 255, 150],
        [116, 139, 204], [68, 94, 153], [75, 102, 78], [86, 110, 90], [77, 100, 79], [98, 125, 102], [65, 88, 65], [75, 93, 81], [75, 93, 81],
        [55, 75, 56], [40, 54, 43], [40, 59, 49], [29, 39, 32], [42, 56, 47], [211, 223, 221], [255, 255, 255], [17, 38, 19], [11, 13, 10],
        [255, 247, 148], [115, 137, 113], [111, 135, 109], [114, 143, 116], [97, 122, 97], [219, 231, 218], [87, 106, 89], [57, 69, 56], [52, 75, 55],
        [56, 79, 62], [60, 77, 75], [36, 44, 39], [34, 43, 40], [232, 236, 235], [255, 255, 255], [252, 252, 252], [5, 2, 2], [33, 50, 32],
        [110, 132, 109], [98, 122, 94], [170, 186, 167], [91, 65, 58], [154, 79, 91], [42, 35, 23], [117, 126, 81], [255, 251, 251], [255, 255, 255],
        [253, 254, 250], [102, 122, 112], [61, 85, 69], [239, 240, 236], [253, 254, 250], [255, 255, 255], [27, 31, 13], [26, 16, 11], [44, 40, 34],
        [107, 132, 107], [195, 216, 127], [253, 255, 246], [250, 255, 239], [196, 198, 168], [255, 253, 229], [255, 247, 215],
    ];
    /// Image 0 alone; perspective draws (0.5, 0.5, 0.35, 0.2, 0.6, 0.45, 0.65, 0.1) with degrees
    /// 10, shear 2; HSV draws (-0.7, 0.3, -0.5); horizontal flip.
    pub const SINGLE_BOXES: &[(usize, [f64; 4])] = &[
        (45, [94.4760, 221.3210, 531.2353, 442.0847]),
        (45, [75.8273, 103.7303, 306.3604, 274.5341]),
        (50, [128.5440, 258.8908, 357.4720, 441.0568]),
        (45, [213.5522, 99.5030, 529.2943, 376.6321]),
        (49, [202.3281, 131.1397, 256.6376, 166.2555]),
        (49, [151.8649, 133.2310, 193.9551, 167.8470]),
        (49, [190.8192, 154.7468, 251.8130, 206.9183]),
        (49, [196.1886, 104.2468, 264.7109, 157.1769]),
    ];
    pub const SINGLE_FNV: u64 = 0x4209_36a8_fbfb_aea6;
    #[rustfmt::skip]
    pub const SINGLE_PIXELS: &[[u8; 3]] = &[
        [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91],
        [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91],
        [91, 91, 91], [91, 91, 91], [91, 91, 91], [144, 0, 23], [197, 201, 143], [162, 20, 95], [158, 10, 99], [88, 22, 17], [152, 117, 36],
        [42, 100, 13], [2, 43, 2], [200, 171, 28], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91],
        [91, 91, 91], [91, 91, 91], [198, 138, 0], [198, 151, 0], [83, 0, 5], [184, 36, 100], [135, 45, 0], [39, 35, 9], [21, 11, 0],
        [19, 20, 15], [1, 25, 3], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91],
        [91, 91, 91], [189, 85, 116], [136, 64, 28], [117, 39, 0], [98, 39, 10], [163, 60, 84], [192, 140, 0], [151, 100, 0], [177, 110, 60],
        [138, 66, 30], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91],
        [0, 33, 113], [0, 39, 107], [193, 203, 194], [185, 175, 111], [203, 204, 197], [154, 108, 73], [162, 41, 33], [190, 145, 0], [118, 62, 0],
        [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91],
        [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91], [91, 91, 91],
    ];
}

/// Replays two reference runs draw for draw (the expected boxes and pixels are in
/// [`reference_run`]): a mosaic with the default settings, and a single image rotated and
/// sheared, each through HSV jitter and a flip. Every pixel must be the reference's (checked by
/// a hash of the whole image, with samples for a readable failure) and every box within a
/// thousandth of a pixel.
#[test]
fn replays_the_reference_pipeline_on_coco8() {
    let fixtures = crate::fixtures_or_skip!();
    let cfg = crate::data::dataset::DatasetConfig::load(fixtures.join("coco8/data.yaml")).unwrap();
    let split = crate::data::dataset::scan_split(&cfg, "train").unwrap();
    let imgs: Vec<RgbImage> = split.images.iter().map(|im| transform::load_resized(&im.image, 640).unwrap()).collect();
    let scripted = |u: &'static [f64]| {
        let mut it = u.iter();
        move |a: f64, b: f64| a + (b - a) * it.next().expect("more draws than scripted")
    };
    let raw = |r: &'static [f64]| {
        let mut it = r.iter();
        move |_: f64, _: f64| *it.next().unwrap()
    };
    let gains = [0.015, 0.7, 0.4];
    let points: Vec<(u32, u32)> = (0..97).map(|i| (i * 6 + 7, (i * 37) % 640)).collect();
    let compare = |s: &Sample, boxes: &[(usize, [f64; 4])], pixels: &[[u8; 3]], hash: u64| {
        assert_eq!(s.boxes.len(), boxes.len(), "{:?}", s.boxes);
        for (got, want) in s.boxes.iter().zip(boxes) {
            assert_eq!(got.class_id, want.0);
            assert!(got.xyxy.iter().zip(&want.1).all(|(&a, b)| (a as f64 - b).abs() < 1e-3), "{got:?} vs {want:?}");
        }
        let diffs: Vec<u8> = points
            .iter()
            .zip(pixels)
            .map(|(&(x, y), want)| {
                let got = s.img.get_pixel(x, y).0;
                (0..3).map(|c| got[c].abs_diff(want[c])).max().unwrap()
            })
            .collect();
        assert!(diffs.iter().all(|&d| d == 0), "sampled pixels differ from the reference by {diffs:?}");
        let h = s.img.as_raw().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
        assert_eq!(h, hash, "the image differs from the reference's ({h:#x})");
    };

    let mut u = scripted(&[0.21, 0.77]);
    let centre = transform::mosaic_centre(640, &mut u);
    let tiles: Vec<(&RgbImage, &[LabelBox])> = imgs.iter().zip(&split.images).map(|(i, l)| (i, &l.boxes[..])).collect();
    let mosaic = transform::mosaic4(640, centre, [tiles[0], tiles[1], tiles[2], tiles[3]]);
    let persp = AugmentConfig::default().perspective_config();
    let mut u = scripted(&[0.5, 0.5, 0.5, 0.9, 0.5, 0.5, 0.3, 0.8]);
    let mut s = transform::random_perspective(&mosaic.img, &mosaic.boxes, &persp, &mut u, (640, 640));
    super::hsv::jitter(&mut s.img, gains, raw(&[0.4, -0.6, 0.8]));
    transform::flip_lr(&mut s);
    compare(&s, reference_run::MOSAIC_BOXES, reference_run::MOSAIC_PIXELS, reference_run::MOSAIC_FNV);

    let boxes = transform::to_pixel_boxes(&split.images[0].boxes, imgs[0].width(), imgs[0].height());
    let persp = PerspectiveConfig { degrees: 10.0, shear: 2.0, ..persp };
    let mut u = scripted(&[0.5, 0.5, 0.35, 0.2, 0.6, 0.45, 0.65, 0.1]);
    let mut s = transform::random_perspective(&imgs[0], &boxes, &persp, &mut u, (640, 640));
    super::hsv::jitter(&mut s.img, gains, raw(&[-0.7, 0.3, -0.5]));
    transform::flip_lr(&mut s);
    compare(&s, reference_run::SINGLE_BOXES, reference_run::SINGLE_PIXELS, reference_run::SINGLE_FNV);
}
