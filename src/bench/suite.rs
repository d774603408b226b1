//! The benchmark suite: real layer shapes, in the JSON format of
//! `../shared/bench/suite.json` (the file PyTorch's anchors were measured on).
//!
//! ```json
//! {"about": "...", "cases": [
//!   {"name": "r50_stem", "op": "conv", "x": [4, 3, 224, 224], "w": [64, 3, 7, 7],
//!    "stride": [2, 2], "padding": [3, 3], "dilation": [1, 1], "groups": 1}
//! ]}
//! ```
//!
//! `op` is `conv` or `conv_transpose`; `x` the input shape; `w` the weight in
//! PyTorch's layout. A `conv_transpose` case may give `output_padding`; a
//! `conv` case may give `padding_mode` (`zeros` unless said: an extension of
//! the shared format, which PyTorch's script does not read).

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};
use crate::geometry::{ConvGeometry, ConvOptions, ConvTransposeOptions, Dims, OpKind, Padding, PaddingMode};

/// The built-in suite, a verbatim copy of `../shared/bench/suite.json`.
const BUILTIN_SUITE: &str = include_str!("suite.json");

/// One layer shape of the suite.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// A unique name, e.g. `"r50_3x3_64"`.
    pub name: String,
    /// Which op the layer runs.
    #[serde(deserialize_with = "op_kind")]
    pub op: OpKind,
    /// The op's input shape `[N, C, spatial...]`.
    pub x: Vec<usize>,
    /// The weight shape in PyTorch's layout.
    pub w: Vec<usize>,
    /// One value per spatial dim.
    pub stride: Vec<i64>,
    /// One value per spatial dim (symmetric).
    pub padding: Vec<i64>,
    /// One value per spatial dim.
    pub dilation: Vec<i64>,
    /// Number of groups.
    pub groups: i64,
    /// `conv_transpose` only; zeros when absent.
    #[serde(default)]
    pub output_padding: Option<Vec<i64>>,
    /// `conv` only; `zeros` when absent.
    #[serde(default, deserialize_with = "padding_mode")]
    pub padding_mode: Option<PaddingMode>,
}

fn op_kind<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<OpKind, D::Error> {
    let name = String::deserialize(d)?;
    [OpKind::Conv, OpKind::ConvTranspose]
        .into_iter()
        .find(|op| op.name() == name)
        .ok_or_else(|| serde::de::Error::custom(format!("unknown op {name:?} (conv, conv_transpose)")))
}

fn padding_mode<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<PaddingMode>, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map(Some).map_err(serde::de::Error::custom)
}

impl Case {
    /// The validated geometry of this case with its batch multiplied by `batch_mult`.
    ///
    /// ```
    /// # fn main() -> ferroconv::Result<()> {
    /// let suite = ferroconv::bench::Suite::builtin()?;
    /// let g = suite.case("r50_stem")?.geometry(2)?;
    /// assert_eq!(g.op_output_shape(), vec![8, 64, 112, 112]);
    /// # Ok(()) }
    /// ```
    pub fn geometry(&self, batch_mult: usize) -> Result<ConvGeometry> {
        let mut x = self.x.clone();
        if let Some(batch) = x.first_mut() {
            *batch =
                batch.checked_mul(batch_mult).ok_or_else(|| self.error(format!("batch {batch} × {batch_mult}")))?;
        }
        let spatial_dims = x.len().saturating_sub(2);
        let each = |v: &[i64]| Dims::Each(v.to_vec());
        let geometry = match self.op {
            OpKind::Conv => {
                if self.output_padding.is_some() {
                    return Err(self.error("output_padding is for conv_transpose cases".into()));
                }
                let options = ConvOptions {
                    stride: each(&self.stride),
                    padding: Padding::Explicit(each(&self.padding)),
                    dilation: each(&self.dilation),
                    groups: self.groups,
                    padding_mode: self.padding_mode.unwrap_or_default(),
                };
                ConvGeometry::conv(spatial_dims, &x, &self.w, None, &options)
            }
            OpKind::ConvTranspose => {
                if self.padding_mode.is_some() {
                    return Err(self.error("padding_mode is for conv cases".into()));
                }
                let options = ConvTransposeOptions {
                    stride: each(&self.stride),
                    padding: Padding::Explicit(each(&self.padding)),
                    output_padding: self.output_padding.as_deref().map_or(Dims::All(0), each),
                    output_size: None,
                    dilation: each(&self.dilation),
                    groups: self.groups,
                };
                ConvGeometry::conv_transpose(spatial_dims, &x, &self.w, None, &options)
            }
        };
        geometry.map_err(|e| self.error(e.to_string()))
    }

    fn error(&self, detail: String) -> Error {
        Error::InvalidArgument { what: "suite", detail: format!("case {:?}: {detail}", self.name) }
    }
}

/// The FLOPs of one forward pass: `2·N·C_out·prod(out)·(C_in/groups)·prod(k)` for a
/// conv, and the mirror `2·N·C_in·prod(in)·(C_out/groups)·prod(k)` for a
/// transposed conv (PyTorch's names; both are twice [`ConvGeometry::macs`]).
pub fn forward_flops(geometry: &ConvGeometry) -> u128 {
    2 * geometry.macs()
}

/// An ordered list of uniquely named, valid cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suite {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    #[serde(default, rename = "about")]
    _about: Option<String>,
    cases: Vec<Case>,
}

impl Suite {
    /// The built-in suite: ResNet-50, U-Net, DCGAN, MobileNetV2 depthwise,
    /// ResNeXt groups, DeepLab dilated, 3-D, 1-D and the article's two examples.
    pub fn builtin() -> Result<Suite> {
        Suite::parse(BUILTIN_SUITE)
    }

    /// Parses a suite in the shared JSON format and validates every case.
    ///
    /// ```
    /// let json = r#"{"cases": [{"name": "tiny", "op": "conv", "x": [1, 2, 8], "w": [4, 2, 3],
    ///     "stride": [1], "padding": [1], "dilation": [1], "groups": 1}]}"#;
    /// let suite = ferroconv::bench::Suite::parse(json).unwrap();
    /// assert_eq!(suite.cases()[0].name, "tiny");
    /// assert!(ferroconv::bench::Suite::parse(r#"{"cases": []}"#).is_err());
    /// ```
    pub fn parse(json: &str) -> Result<Suite> {
        let file: SuiteFile = serde_json::from_str(json)
            .map_err(|e| Error::InvalidArgument { what: "suite", detail: format!("not a suite file: {e}") })?;
        Suite::new(file.cases)
    }

    /// Reads and parses a suite file.
    pub fn from_file(path: &std::path::Path) -> Result<Suite> {
        let json = std::fs::read_to_string(path).map_err(|e| Error::InvalidArgument {
            what: "suite",
            detail: format!("cannot read {}: {e}", path.display()),
        })?;
        Suite::parse(&json)
    }

    fn new(cases: Vec<Case>) -> Result<Suite> {
        if cases.is_empty() {
            return Err(Error::InvalidArgument { what: "suite", detail: "no cases".into() });
        }
        for (i, case) in cases.iter().enumerate() {
            if cases[..i].iter().any(|c| c.name == case.name) {
                return Err(case.error("the name is used twice".into()));
            }
            case.geometry(1)?;
        }
        Ok(Suite { cases })
    }

    /// The cases, in file order.
    pub fn cases(&self) -> &[Case] {
        &self.cases
    }

    /// The case called `name`.
    pub fn case(&self, name: &str) -> Result<&Case> {
        self.cases.iter().find(|c| c.name == name).ok_or_else(|| self.unknown(name))
    }

    /// The cases named in `names` (in suite order); an unknown name is an error listing the known ones.
    pub fn select<S: AsRef<str>>(&self, names: &[S]) -> Result<Suite> {
        if let Some(missing) = names.iter().find(|n| self.case(n.as_ref()).is_err()) {
            return Err(self.unknown(missing.as_ref()));
        }
        let cases = self.cases.iter().filter(|c| names.iter().any(|n| n.as_ref() == c.name)).cloned().collect();
        Suite::new(cases)
    }

    fn unknown(&self, name: &str) -> Error {
        let known: Vec<&str> = self.cases.iter().map(|c| c.name.as_str()).collect();
        Error::InvalidArgument { what: "cases", detail: format!("unknown case {name:?} (known: {})", known.join(", ")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flops(name: &str) -> u128 {
        let suite = Suite::builtin().unwrap();
        forward_flops(&suite.case(name).unwrap().geometry(1).unwrap())
    }

    #[test]
    fn flops_match_hand_computed_values() {
        // 7x7 stride 2 on 224x224 with padding 3: out = (224 + 6 - 7) / 2 + 1 = 112.
        assert_eq!(flops("r50_stem"), 2 * 4 * 64 * 112 * 112 * 3 * 7 * 7);
        // Depthwise: C_in / groups = 1.
        assert_eq!(flops("mbv2_dw_144"), 2 * 4 * 144 * 56 * 56 * 9);
        // Grouped: 256 / 32 = 8 input channels per group.
        assert_eq!(flops("resnext_g32"), 2 * 4 * 256 * 28 * 28 * 8 * 9);
        // Dilation 2 with padding 2 keeps 64x64.
        assert_eq!(flops("aspp_dil2"), 2 * 256 * 64 * 64 * 256 * 9);
        assert_eq!(flops("conv3d_32"), 2 * 32 * 16 * 32 * 32 * 32 * 27);
        assert_eq!(flops("conv1d_256"), 2 * 8 * 256 * 1024 * 256 * 3);
        // Transposed: counted over the op's input, 2·N·C_in·prod(in)·(C_out/groups)·prod(k).
        assert_eq!(flops("unet_up_128"), 2 * 128 * 64 * 64 * 64 * 4);
        assert_eq!(flops("dcgan_up_512"), 2 * 16 * 512 * 4 * 4 * 256 * 16);
        assert_eq!(flops("article_convT"), 2 * 16 * 16 * 16 * 3 * 9);
    }

    #[test]
    fn pytorch_mflop_column_agrees() {
        // The MFLOP column of ../shared/bench/pytorch-cpu.md, rounded as printed there.
        for (name, mflop) in [("r50_stem", 944), ("r50_1x1_256_64", 411), ("unet_enc_64", 1208), ("aspp_dil2", 4832)] {
            assert_eq!((flops(name) as f64 / 1e6).round() as u128, mflop, "{name}");
        }
    }

    #[test]
    fn builtin_suite_has_the_shared_shapes() {
        let suite = Suite::builtin().unwrap();
        assert_eq!(suite.cases().len(), 16);
        let up = suite.case("article_convT").unwrap();
        assert_eq!(up.op, OpKind::ConvTranspose);
        assert_eq!(up.output_padding, Some(vec![1, 1]));
        assert_eq!(up.geometry(1).unwrap().op_output_shape(), vec![1, 3, 32, 32]);
        let dw = suite.case("mbv2_dw_144").unwrap();
        assert_eq!((dw.x.as_slice(), dw.w.as_slice(), dw.groups), (&[4, 144, 56, 56][..], &[144, 1, 3, 3][..], 144));
        assert_eq!(suite.case("conv3d_32").unwrap().geometry(1).unwrap().spatial_dims, 3);
    }

    /// The embedded copy must not drift from the shared file PyTorch's numbers were measured on.
    /// The shared folder sits beside the repository on the project's machines; elsewhere
    /// (a bare clone) there is nothing to compare with, and the test says so.
    #[test]
    fn builtin_suite_equals_the_shared_file() {
        let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/suite.json");
        if !shared.exists() {
            eprintln!("skipped: {} not found", shared.display());
            return;
        }
        assert_eq!(Suite::from_file(&shared).unwrap(), Suite::builtin().unwrap());
    }

    #[test]
    fn batch_mult_scales_the_batch_only() {
        let suite = Suite::builtin().unwrap();
        let case = suite.case("unet_up_128").unwrap();
        let (g1, g16) = (case.geometry(1).unwrap(), case.geometry(16).unwrap());
        assert_eq!(g16.op_input_shape(), vec![16, 128, 64, 64]);
        assert_eq!(forward_flops(&g16), 16 * forward_flops(&g1));
        assert!(case.geometry(usize::MAX).is_err());
    }

    fn one_case(fields: &str) -> Result<Suite> {
        Suite::parse(&format!(r#"{{"cases": [{{"name": "c", {fields}}}]}}"#))
    }

    const CONV: &str = r#""op": "conv", "x": [1, 4, 8, 8], "w": [8, 4, 3, 3], "stride": [1, 1],
        "padding": [1, 1], "dilation": [1, 1], "groups": 1"#;

    #[test]
    fn parser_accepts_the_extensions() {
        let suite = one_case(&format!(r#"{CONV}, "padding_mode": "reflect""#)).unwrap();
        assert_eq!(suite.cases()[0].padding_mode, Some(PaddingMode::Reflect));
        assert_eq!(suite.cases()[0].geometry(1).unwrap().padding_mode, PaddingMode::Reflect);
    }

    #[test]
    fn parser_rejects_bad_suites_with_the_case_name() {
        let err = |fields: &str| one_case(fields).unwrap_err().to_string();
        assert!(err(&format!(r#"{CONV}, "stride_typo": [1, 1]"#)).contains("stride_typo"));
        assert!(err(&CONV.replace("\"conv\"", "\"deconv\"")).contains("deconv"));
        assert!(err(&CONV.replace("[8, 4, 3, 3]", "[8, 3, 3, 3]")).contains("case \"c\""));
        assert!(err(&CONV.replace("\"stride\": [1, 1]", "\"stride\": [1]")).contains("stride"));
        assert!(err(&format!(r#"{CONV}, "output_padding": [1, 1]"#)).contains("output_padding"));
        assert!(err(&format!(r#"{CONV}, "padding_mode": "mirror""#)).contains("mirror"));
        let twice = format!(r#"{{"cases": [{{"name": "c", {CONV}}}, {{"name": "c", {CONV}}}]}}"#);
        assert!(Suite::parse(&twice).unwrap_err().to_string().contains("twice"));
        assert!(Suite::parse("[]").is_err());
    }

    #[test]
    fn select_keeps_suite_order_and_names_unknown_cases() {
        let suite = Suite::builtin().unwrap();
        let picked = suite.select(&["conv1d_256", "r50_stem"]).unwrap();
        let names: Vec<&str> = picked.cases().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["r50_stem", "conv1d_256"]);
        let err = suite.select(&["r50_stem", "nope"]).unwrap_err().to_string();
        assert!(err.contains("\"nope\"") && err.contains("r50_3x3_64"), "{err}");
    }
}
