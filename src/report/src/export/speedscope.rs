//! speedscope's JSON file format (`https://www.speedscope.app/file-format-schema.json`): one
//! `sampled` profile per sample type, in one file, the chosen one shown first
//! (`activeProfileIndex`). Stacks are the flamegraph's (every frame, inlined ones included,
//! outermost first), frames named as there, with their source file.

use std::collections::HashMap;

use serde::Serialize;
use zmtrace_format::Dump;

use super::{Profile, SampleType};
use zmtrace_analyze::symbols::Symbolizer;

pub const SCHEMA: &str = "https://www.speedscope.app/file-format-schema.json";

#[derive(Debug, Serialize)]
pub struct File {
    #[serde(rename = "$schema")]
    pub schema: &'static str,
    pub shared: Shared,
    pub profiles: Vec<SampledProfile>,
    pub name: String,
    #[serde(rename = "activeProfileIndex")]
    pub active_profile_index: usize,
    pub exporter: String,
}

#[derive(Debug, Serialize)]
pub struct Shared {
    pub frames: Vec<SsFrame>,
}

#[derive(Debug, Serialize, PartialEq, Eq, Hash, Clone)]
pub struct SsFrame {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SampledProfile {
    /// Always "sampled".
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    /// "bytes", or "none" for counts.
    pub unit: &'static str,
    #[serde(rename = "startValue")]
    pub start_value: u64,
    #[serde(rename = "endValue")]
    pub end_value: u64,
    /// Stacks as indices into `shared.frames`, outermost first.
    pub samples: Vec<Vec<usize>>,
    pub weights: Vec<u64>,
}

/// The file for `p`; `active` is the sample type shown when it is opened.
pub fn build(dump: &Dump, p: &Profile, sym: &mut Symbolizer, active: SampleType) -> File {
    let mut frames: Vec<SsFrame> = Vec::new();
    let mut frame_ids: HashMap<SsFrame, usize> = HashMap::new();
    let mut stacks: HashMap<u32, Vec<usize>> = HashMap::new();
    let types = p.sample_types();
    let mut profiles = Vec::with_capacity(types.len());
    for &t in &types {
        let mut samples = Vec::new();
        let mut weights = Vec::new();
        for (id, v) in p.values(t) {
            if v == 0 {
                continue;
            }
            let stack = stacks.entry(id).or_insert_with(|| {
                let fs = sym.stack(id);
                let mut s: Vec<usize> = fs
                    .iter()
                    .rev()
                    .map(|f| {
                        let key = SsFrame {
                            name: f.label(),
                            file: f.file.clone(),
                        };
                        *frame_ids.entry(key.clone()).or_insert_with(|| {
                            frames.push(key);
                            frames.len() - 1
                        })
                    })
                    .collect();
                if s.is_empty() {
                    let key = SsFrame {
                        name: "<empty stack>".into(),
                        file: None,
                    };
                    s.push(*frame_ids.entry(key.clone()).or_insert_with(|| {
                        frames.push(key);
                        frames.len() - 1
                    }));
                }
                s
            });
            samples.push(stack.clone());
            weights.push(v);
        }
        profiles.push(SampledProfile {
            kind: "sampled",
            name: format!("{}: {}", t.name(), t.describe()),
            unit: if t.unit() == "bytes" { "bytes" } else { "none" },
            start_value: 0,
            end_value: weights.iter().sum(),
            samples,
            weights,
        });
    }
    let program = dump
        .process
        .as_ref()
        .map(|p| format!("{} (pid {})", p.command().join(" "), p.pid))
        .unwrap_or_else(|| dump.path.display().to_string());
    File {
        schema: SCHEMA,
        shared: Shared { frames },
        profiles,
        name: program,
        active_profile_index: types.iter().position(|&t| t == active).unwrap_or(0),
        exporter: format!("zmtrace {}", env!("CARGO_PKG_VERSION")),
    }
}
