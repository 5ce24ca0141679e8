//! Annotated images: boxes and label tags drawn onto the picture, in the manner of Ultralytics'
//! plots (one colour per class, line width from the image size, a filled tag holding the label).
//!
//! Text uses the public-domain 8x8 bitmap font of the `font8x8` crate, scaled by whole pixels, so
//! nothing depends on fonts installed on the system. Only ASCII is drawn; other characters show
//! as `?`.

use image::{Rgb, RgbImage};

/// One detection to draw.
#[derive(Clone, Copy, Debug)]
pub struct BoxLabel<'a> {
    /// Box corners (x1, y1, x2, y2) in pixels of the image drawn on.
    pub xyxy: [f32; 4],
    /// Class index; picks the colour.
    pub class_id: usize,
    /// Tag text, e.g. `"person 0.91"`; empty for no tag.
    pub label: &'a str,
}

/// Class colours. Ten hues 36° apart in two tones (bright, then darker and shifted by 18°);
/// consecutive class ids step the hue by 108° so that neighbouring ids look clearly different.
const PALETTE: [[u8; 3]; 20] = [
    [242, 48, 48],
    [87, 242, 48],
    [48, 126, 242],
    [242, 48, 165],
    [203, 242, 48],
    [48, 242, 242],
    [203, 48, 242],
    [242, 165, 48],
    [48, 242, 126],
    [87, 48, 242],
    [178, 66, 18],
    [18, 178, 34],
    [18, 34, 178],
    [178, 18, 66],
    [98, 178, 18],
    [18, 130, 178],
    [178, 18, 162],
    [178, 162, 18],
    [18, 178, 130],
    [98, 18, 178],
];

/// The colour of a class (the palette repeats every 20 classes).
pub fn class_color(class_id: usize) -> Rgb<u8> {
    Rgb(PALETTE[class_id % PALETTE.len()])
}

/// Box line width for an image: max(round((h + w) / 2 * 0.003), 2), rounding like Python.
pub fn line_width(width: u32, height: u32) -> u32 {
    let lw = ((width as f64 + height as f64) / 2.0 * 0.003).round_ties_even() as u32;
    lw.max(2)
}

/// White or black, whichever has the higher contrast (WCAG definition) against `bg`.
pub fn text_color(bg: Rgb<u8>) -> Rgb<u8> {
    let linear = |c: u8| {
        let c = c as f32 / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let [r, g, b] = bg.0;
    let lum = 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
    let against_white = 1.05 / (lum + 0.05);
    let against_black = (lum + 0.05) / 0.05;
    if against_black > against_white {
        Rgb([0, 0, 0])
    } else {
        Rgb([255, 255, 255])
    }
}

/// Fills the half-open rectangle [x0, x1) x [y0, y1), clipped to the image.
fn fill_rect(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb<u8>) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (x0, x1) = (x0.clamp(0, w), x1.clamp(0, w));
    let (y0, y1) = (y0.clamp(0, h), y1.clamp(0, h));
    for y in y0..y1 {
        for x in x0..x1 {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}

/// Pixel coordinate of a box edge. NaN becomes 0 and huge values are limited to ±2^30 (far
/// outside any image, so they get clipped) to keep the arithmetic below from overflowing.
fn coord(v: f32) -> i64 {
    const LIMIT: f32 = (1u32 << 30) as f32;
    v.round().clamp(-LIMIT, LIMIT) as i64
}

/// Draws `text` with its top-left corner at (x, y), each font pixel `scale` pixels wide.
fn draw_text(img: &mut RgbImage, text: &str, x: i64, y: i64, scale: i64, color: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        let code = if ch.is_ascii() {
            ch as usize
        } else {
            '?' as usize
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        let gx = x + i as i64 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                // Bit 0 is the leftmost pixel of the row.
                if bits >> col & 1 == 1 {
                    let px = gx + col * scale;
                    let py = y + row as i64 * scale;
                    fill_rect(img, px, py, px + scale, py + scale, color);
                }
            }
        }
    }
}

/// Draws boxes and filled label tags like Ultralytics' plots: line width
/// max(round((h+w)/2 * 0.003), 2), one colour per class id from a fixed palette of 20 distinct
/// colours, label text in white or black whichever contrasts with the colour, tag above the box
/// (inside if no room), clipped to the image.
///
/// Boxes are drawn in order, each with its tag, so later detections overlap earlier ones.
/// Coordinates may lie partly or wholly outside the image.
pub fn draw_detections(img: &mut RgbImage, boxes: &[BoxLabel]) {
    let (img_w, img_h) = img.dimensions();
    if img_w == 0 || img_h == 0 {
        return;
    }
    let lw = line_width(img_w, img_h) as i64;
    // Font pixels as wide as the box lines: about the text size Ultralytics picks (lw / 3 of
    // OpenCV's Hershey font, ~7 px of glyph height per unit of line width).
    let scale = lw;
    // The outline is centred on the box edges: `before` pixels outside, `after` inside.
    let before = lw / 2;
    let after = lw - before;
    for b in boxes {
        let color = class_color(b.class_id);
        let (xa, xb) = (coord(b.xyxy[0]), coord(b.xyxy[2]));
        let (ya, yb) = (coord(b.xyxy[1]), coord(b.xyxy[3]));
        let (x1, x2) = (xa.min(xb), xa.max(xb));
        let (y1, y2) = (ya.min(yb), ya.max(yb));
        let (outer_x1, outer_y1) = (x1 - before, y1 - before);
        let (outer_x2, outer_y2) = (x2 + after, y2 + after);
        fill_rect(img, outer_x1, outer_y1, outer_x2, y1 + after, color); // top
        fill_rect(img, outer_x1, y2 - before, outer_x2, outer_y2, color); // bottom
        fill_rect(img, outer_x1, outer_y1, x1 + after, outer_y2, color); // left
        fill_rect(img, x2 - before, outer_y1, outer_x2, outer_y2, color); // right

        if b.label.is_empty() {
            continue;
        }
        let chars = b.label.chars().count() as i64;
        let pad = scale;
        let tag_w = chars.saturating_mul(8 * scale) + pad;
        let tag_h = 8 * scale + pad;
        // Above the box, resting on its top line, when it fits; otherwise just inside the top.
        let tag_y = if y1 + after - tag_h >= 0 {
            y1 + after - tag_h
        } else {
            outer_y1.max(0)
        };
        // Slide left rather than run off the right edge; never past the left edge.
        let tag_x = outer_x1.min(img_w as i64 - tag_w).max(0);
        fill_rect(
            img,
            tag_x,
            tag_y,
            tag_x.saturating_add(tag_w),
            tag_y + tag_h,
            color,
        );
        draw_text(
            img,
            b.label,
            tag_x + pad,
            tag_y + pad,
            scale,
            text_color(color),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREY: Rgb<u8> = Rgb([114, 114, 114]);

    fn canvas(w: u32, h: u32) -> RgbImage {
        RgbImage::from_pixel(w, h, GREY)
    }

    #[test]
    fn palette_is_distinct_and_cycles() {
        let colors: std::collections::HashSet<_> = (0..20).map(|i| class_color(i).0).collect();
        assert_eq!(colors.len(), 20);
        assert_eq!(class_color(3), class_color(23));
    }

    #[test]
    fn line_width_follows_image_size() {
        assert_eq!(line_width(640, 480), 2);
        assert_eq!(line_width(810, 1080), 3);
        assert_eq!(line_width(4000, 3000), 10);
        assert_eq!(line_width(1, 1), 2);
    }

    #[test]
    fn text_contrasts_with_tag() {
        assert_eq!(text_color(Rgb([255, 255, 0])), Rgb([0, 0, 0]));
        assert_eq!(text_color(Rgb([20, 20, 160])), Rgb([255, 255, 255]));
    }

    #[test]
    fn box_border_drawn_and_far_pixels_untouched() {
        let mut img = canvas(200, 200);
        let color = class_color(5);
        draw_detections(
            &mut img,
            &[BoxLabel {
                xyxy: [50.0, 60.0, 150.0, 160.0],
                class_id: 5,
                label: "",
            }],
        );
        for (x, y) in [
            (50, 60),
            (100, 60),
            (150, 100),
            (100, 160),
            (50, 159),
            (49, 100),
            (149, 100),
        ] {
            assert_eq!(*img.get_pixel(x, y), color, "border pixel ({x}, {y})");
        }
        for (x, y) in [(100, 100), (10, 10), (190, 190), (53, 100), (100, 164)] {
            assert_eq!(
                *img.get_pixel(x, y),
                GREY,
                "pixel ({x}, {y}) should be untouched"
            );
        }
    }

    #[test]
    fn label_tag_above_box_or_inside_when_no_room() {
        let mut img = canvas(300, 300);
        draw_detections(
            &mut img,
            &[BoxLabel {
                xyxy: [100.0, 100.0, 200.0, 200.0],
                class_id: 0,
                label: "bus 0.93",
            }],
        );
        // Tag sits above the top edge, starting at the outline's left edge.
        assert_eq!(*img.get_pixel(100, 90), class_color(0));
        assert_eq!(
            *img.get_pixel(120, 130),
            GREY,
            "inside of the box stays clear"
        );
        // Some text pixels in the tag are in the contrasting colour.
        let text = text_color(class_color(0));
        let tag_has_text = (82..101).any(|y| (100..240).any(|x| *img.get_pixel(x, y) == text));
        assert!(tag_has_text);

        let mut img = canvas(300, 300);
        draw_detections(
            &mut img,
            &[BoxLabel {
                xyxy: [100.0, 2.0, 200.0, 200.0],
                class_id: 0,
                label: "bus",
            }],
        );
        assert_eq!(
            *img.get_pixel(101, 10),
            class_color(0),
            "tag moves inside the box"
        );
    }

    #[test]
    fn edges_partial_and_odd_boxes_do_not_panic() {
        let label = "a rather long label 0.99 ünïcödé";
        for (w, h) in [(1, 1), (2, 3), (17, 5), (640, 480), (0, 0), (0, 10)] {
            let mut img = canvas(w, h);
            let boxes: Vec<BoxLabel> = [
                [0.0, 0.0, 10.0, 10.0],
                [-50.0, -50.0, 5000.0, 5000.0],
                [600.0, 400.0, 700.0, 500.0],
                [630.0, 0.0, 640.0, 480.0],
                [10.0, 10.0, 5.0, 5.0],
                [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30],
                [-100.0, -100.0, -10.0, -10.0],
            ]
            .into_iter()
            .enumerate()
            .map(|(i, xyxy)| BoxLabel {
                xyxy,
                class_id: i * 7,
                label,
            })
            .collect();
            draw_detections(&mut img, &boxes);
        }
    }
}
