//! The YOLO26 end-to-end detection loss and its gradient with respect to the head outputs.
