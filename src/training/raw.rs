//! [`RawData`]: rows of features and labels as a reader (inline, CSV, `.npy`) produced them. A
//! leaf shared by the readers and by `data`, so that the readers need not depend on `data`.

/// Rows of features and labels as read, before they are fitted to a loss.
#[derive(Debug, Clone, PartialEq)]
pub struct RawData {
    pub rows: usize,
    pub features: usize,
    /// Row-major `rows × features`.
    pub x: Vec<f32>,
    /// Row-major `rows × y_columns`.
    pub y: Vec<f64>,
    /// `None` when each row has one plain label (`y` was flat).
    pub y_columns: Option<usize>,
    /// Field named in errors about labels (`data.y`, `data.label_column`, `data.uri.y`).
    pub y_field: String,
}
