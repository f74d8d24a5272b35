//! Bad model folders end in errors that name the file, tensor or field.

mod common;
use common::{scratch, synth_folder};
use lockstep::model::Model;
use std::path::Path;

fn open_err(dir: &Path) -> String {
    match Model::open_dir(dir) {
        Ok(_) => panic!("{} opened without error", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// `open_err` in a thread with a deadline: opening that blocks or swaps
/// fails the test instead of hanging it.
fn open_err_within(dir: &Path, secs: u64) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(Model::open_dir(&d).err().map(|e| e.to_string()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("opening {} took over {secs} s", dir.display()))
        .unwrap_or_else(|| panic!("{} opened without error", dir.display()))
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

/// Rewrites model.safetensors with its header transformed by `f` (data kept).
fn edit_header(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    f(h.as_object_mut().unwrap());
    let mut text = serde_json::to_string(&h).unwrap();
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&p, out).unwrap();
}

#[test]
fn a_truncated_safetensors_file_is_refused_naming_the_file_and_tensor() {
    let dir = synth_folder("err-truncated", "tiny", 0);
    let p = dir.join("model.safetensors");
    let len = std::fs::metadata(&p).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len - 100).unwrap();
    let e = open_err(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    assert!(
        e.contains("model.norm.weight") || e.contains("tensor `"),
        "{e}"
    );
}

#[test]
fn a_header_length_past_the_end_of_the_file_is_refused() {
    let dir = synth_folder("err-header-len", "tiny", 0);
    let p = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    let claimed = bytes.len() as u64 * 2;
    bytes[..8].copy_from_slice(&claimed.to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
    let e = open_err(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("runs past the end"),
        "{e}"
    );
}

#[test]
fn a_missing_tensor_is_named() {
    // Renamed, so its bytes still belong to a tensor and only the name is missing.
    let dir = synth_folder("err-missing", "tiny", 0);
    edit_header(&dir, |h| {
        let t = h.remove("model.layers.2.self_attn.k_norm.weight").unwrap();
        h.insert("model.layers.2.self_attn.k_norm.weight_renamed".into(), t);
    });
    let e = open_err(&dir);
    assert!(
        e.contains("model.layers.2.self_attn.k_norm.weight") && e.contains("missing"),
        "{e}"
    );
}

/// A header entry dropped without its bytes leaves data that belongs to no
/// tensor, which the format forbids (the safetensors library refuses such
/// files too); so do bytes past the last tensor, and a name given twice.
#[test]
fn holes_trailing_bytes_and_repeated_names_in_a_header_are_refused() {
    let dir = synth_folder("err-hole", "tiny", 0);
    edit_header(&dir, |h| {
        h.remove("model.layers.2.self_attn.k_norm.weight");
    });
    let e = open_err(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("belong to no tensor"),
        "{e}"
    );

    let dir = synth_folder("err-trailing", "tiny", 0);
    let p = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.extend_from_slice(&[0u8; 16]);
    std::fs::write(&p, bytes).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("indexed whole"), "{e}");

    // The same key twice: written by hand, since a JSON map cannot hold it.
    let dir = synth_folder("err-dup", "tiny", 0);
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap().trim_end();
    let key = "\"model.norm.weight\":";
    let at = header.find(key).unwrap();
    let entry_end = at + header[at..].find('}').unwrap() + 1;
    let entry = &header[at..entry_end];
    let mut text = format!("{},{}", &header[..header.len() - 1], &entry);
    text.push('}');
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&p, out).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("`model.norm.weight` is named twice"), "{e}");
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named_with_both_shapes() {
    let dir = synth_folder("err-shape", "tiny", 0);
    // Same byte count, transposed shape: only the shape check can catch it.
    edit_header(&dir, |h| {
        h["model.layers.1.mlp.up_proj.weight"]["shape"] = serde_json::json!([64, 160]);
    });
    let e = open_err(&dir);
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight")
            && e.contains("[64, 160]")
            && e.contains("[160, 64]"),
        "{e}"
    );
}

#[test]
fn a_tensor_of_an_unsupported_dtype_is_named() {
    let dir = synth_folder("err-dtype", "tiny", 0);
    edit_header(&dir, |h| {
        h["model.norm.weight"]["dtype"] = serde_json::json!("I16");
    });
    let e = open_err(&dir);
    assert!(
        e.contains("model.norm.weight") && e.contains("I16") && e.contains("BF16"),
        "{e}"
    );
}

/// F64 parses (trace dumps use it) but is no weight dtype: a checkpoint
/// in it is refused when opened, naming the tensor and the dtypes taken.
#[test]
fn float64_weights_are_refused_by_name() {
    let dir = tiny_folder_with(
        "err-f64",
        lockstep::model::safetensors::Dtype::F64,
        |_, _| {},
    );
    let e = open_err(&dir);
    assert!(
        e.contains("F64") && e.contains("BF16, F16 or F32") && e.contains("tensor `"),
        "{e}"
    );
}

#[test]
fn overlapping_tensor_offsets_are_refused() {
    let dir = synth_folder("err-overlap", "tiny", 0);
    edit_header(&dir, |h| {
        let first = h["model.embed_tokens.weight"]["data_offsets"].clone();
        let w = h.get_mut("model.layers.0.input_layernorm.weight").unwrap();
        // 128 bytes (64 x bf16) inside the embedding's span.
        let start = first[0].as_u64().unwrap();
        w["data_offsets"] = serde_json::json!([start, start + 128]);
    });
    let e = open_err(&dir);
    assert!(e.contains("overlap"), "{e}");
}

#[test]
fn a_config_missing_a_required_field_names_it() {
    let dir = synth_folder("err-config-field", "tiny", 0);
    edit_config(&dir, |c| {
        c.remove("num_key_value_heads");
    });
    let e = open_err(&dir);
    assert!(
        e.contains("config.json") && e.contains("`num_key_value_heads`") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn a_config_field_of_the_wrong_type_names_it() {
    let dir = synth_folder("err-config-type", "tiny", 0);
    edit_config(&dir, |c| {
        c.insert("hidden_size".into(), serde_json::json!("sixty-four"));
    });
    let e = open_err(&dir);
    assert!(e.contains("`hidden_size`") && e.contains("integer"), "{e}");
}

#[test]
fn an_unsupported_architecture_is_refused_by_name() {
    let dir = synth_folder("err-arch", "tiny", 0);
    edit_config(&dir, |c| {
        c.insert(
            "architectures".into(),
            serde_json::json!(["LlamaForCausalLM"]),
        );
    });
    let e = open_err(&dir);
    assert!(
        e.contains("LlamaForCausalLM") && e.contains("unsupported architecture"),
        "{e}"
    );
}

#[test]
fn unknown_config_fields_are_tolerated_and_rope_parameters_are_read() {
    let dir = synth_folder("ok-config-v5", "tiny", 0);
    edit_config(&dir, |c| {
        c.insert("some_future_field".into(), serde_json::json!({"x": 1}));
        c.remove("rope_theta");
        c.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": 5e5}),
        );
    });
    let m = Model::open_dir(&dir).unwrap();
    assert_eq!(m.config.rope_theta, 5e5);
}

#[test]
fn a_scaled_rope_is_refused_rather_than_ignored() {
    let dir = synth_folder("err-rope-yarn", "tiny", 0);
    edit_config(&dir, |c| {
        c.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
        );
    });
    let e = open_err(&dir);
    assert!(e.contains("`rope_scaling`") && e.contains("yarn"), "{e}");
}

#[test]
fn non_finite_weights_are_refused_naming_tensor_and_index() {
    let dir = synth_folder("err-nan", "tiny", 0);
    let p = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = h["model.norm.weight"]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = 8 + n + start + 2 * 5; // element 5
    bytes[at..at + 2].copy_from_slice(&0x7fc0u16.to_le_bytes()); // bf16 NaN
    std::fs::write(&p, bytes).unwrap();
    let m = Model::open_dir(&dir).unwrap();
    let e = m.tensor("model.norm.weight").unwrap_err().to_string();
    assert!(
        e.contains("model.norm.weight") && e.contains("index 5"),
        "{e}"
    );
}

#[test]
fn a_folder_without_weights_names_the_file_it_looked_for() {
    let dir = synth_folder("err-no-weights", "tiny", 0);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn a_missing_folder_is_reported_as_such() {
    let e = open_err(&scratch("err-nothing").join("absent"));
    assert!(e.contains("not a folder"), "{e}");
}

#[test]
fn an_unexpected_tensor_in_its_own_bytes_is_listed_and_the_model_runs() {
    use lockstep::model::safetensors::{write_file, Dtype, SafeTensors, TensorSpec};
    let src = synth_folder("warn-unexpected-src", "tiny", 0);
    let dir = scratch("warn-unexpected-own");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let st = SafeTensors::open_dir(&src).unwrap();
    let mut specs: Vec<TensorSpec> = st
        .names()
        .map(|n| {
            let (t, _) = st.get(n).unwrap();
            TensorSpec {
                name: n.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
            }
        })
        .collect();
    specs.push(TensorSpec {
        name: "model.extra.weight".into(),
        dtype: Dtype::BF16,
        shape: vec![4],
    });
    write_file(
        &dir.join("model.safetensors"),
        &specs,
        &Default::default(),
        |t| {
            Ok(st
                .get(&t.name)
                .map_or(vec![0u8; 8], |(x, _)| x.bytes.to_vec()))
        },
    )
    .unwrap();
    let m = Model::open_dir(&dir).unwrap();
    assert_eq!(m.unexpected_tensors, vec!["model.extra.weight".to_string()]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args([
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt-ids",
            "1,2",
            "--max-tokens",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("model.extra.weight"),
        "{err}"
    );
}

/// `synth:tiny` written as a folder of float32 tensors (or bfloat16 ones),
/// with `edit` applied to each tensor's values first.
fn tiny_folder_with(
    name: &str,
    dtype: lockstep::model::safetensors::Dtype,
    edit: impl Fn(&str, &mut [f32]),
) -> std::path::PathBuf {
    use lockstep::model::safetensors::{write_file, Dtype, TensorSpec};
    let src = synth_folder(&format!("{name}-src"), "tiny", 0);
    let m = Model::open_dir(&src).unwrap();
    let dir = scratch(name);
    for f in ["config.json", "generation_config.json", "tokenizer.json"] {
        let _ = std::fs::copy(src.join(f), dir.join(f));
    }
    let specs: Vec<TensorSpec> = m
        .expected_tensors()
        .into_iter()
        .map(|t| TensorSpec { dtype, ..t })
        .collect();
    write_file(
        &dir.join("model.safetensors"),
        &specs,
        &Default::default(),
        |t| {
            let mut v = m.tensor(&t.name).unwrap().to_f32_vec();
            edit(&t.name, &mut v);
            Ok(match dtype {
                Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Dtype::F64 => v.iter().flat_map(|&x| f64::from(x).to_le_bytes()).collect(),
                _ => v
                    .iter()
                    .flat_map(|&x| lockstep::util::bf16_bits(x).to_le_bytes())
                    .collect(),
            })
        },
    )
    .unwrap();
    dir
}

/// A float32 weight that is finite but rounds to a bf16 infinity is refused
/// by a bf16 backend, naming the tensor, the index and the rounding; the
/// f64 backend, which keeps it finite, loads the same folder.
#[test]
fn f32_weights_that_round_to_bf16_infinity_are_refused_by_a_bf16_backend() {
    use lockstep::backend::cpu::{CpuBackend, Numerics};
    use lockstep::engine::Engine;
    use lockstep::model::safetensors::Dtype;
    let dir = tiny_folder_with("err-bf16-overflow", Dtype::F32, |name, v| {
        if name == "model.norm.weight" {
            v[5] = 3.4e38; // finite in f32; above bf16's largest finite (3.39e38)
        }
    });
    let m = Model::open_dir(&dir).unwrap();
    let e = Engine::load(&m, CpuBackend::new(Numerics::Bf16))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("model.norm.weight") && e.contains("rounded to bf16") && e.contains("index 5"),
        "{e}"
    );
    Engine::load(&m, CpuBackend::new(Numerics::F64)).unwrap();
    // The control: the same folder without the planted value loads in bf16.
    let ok = tiny_folder_with("err-bf16-overflow-control", Dtype::F32, |_, _| {});
    Engine::load(
        &Model::open_dir(&ok).unwrap(),
        CpuBackend::new(Numerics::Bf16),
    )
    .unwrap();
}

/// Finite weights whose bf16 activations overflow: generation, teacher-forced
/// logits and the layer capture behind parity are errors naming where the
/// run left the finite numbers, not rows that compare two broken paths.
#[test]
fn activations_that_overflow_are_an_error_naming_where() {
    use lockstep::backend::cpu::{CpuBackend, Numerics};
    use lockstep::engine::generate::GenerateOptions;
    use lockstep::engine::{Capture, Engine};
    use lockstep::model::safetensors::Dtype;
    let dir = tiny_folder_with("err-act-overflow", Dtype::BF16, |name, v| {
        if name == "model.layers.1.post_attention_layernorm.weight" {
            v.iter_mut().for_each(|x| *x = 3.0e38);
        }
    });
    let e = Engine::load(
        &Model::open_dir(&dir).unwrap(),
        CpuBackend::new(Numerics::Bf16),
    )
    .unwrap();
    let prompt = [1, 17, 42, 99];
    let err = e
        .generate(&prompt, &GenerateOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("non-finite logits at step 0"), "{err}");
    let err = e
        .teacher_forced(
            &prompt,
            lockstep::backend::AttnPath::Graph,
            &mut Capture::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("non-finite logits"), "{err}");
    let mut cap = Capture {
        layers: Some(Vec::new()),
        qkv: None,
    };
    let err = e
        .teacher_forced(&prompt, lockstep::backend::AttnPath::Graph, &mut cap)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("non-finite activations at layer 1's output"),
        "{err}"
    );
    // The control: the unedited folder runs.
    let ok = tiny_folder_with("err-act-overflow-control", Dtype::BF16, |_, _| {});
    let e = Engine::load(
        &Model::open_dir(&ok).unwrap(),
        CpuBackend::new(Numerics::Bf16),
    )
    .unwrap();
    e.generate(&prompt, &GenerateOptions::default(), &mut |_| {})
        .unwrap();
}

/// A FIFO or a directory in place of a model file is refused by name,
/// without blocking on the FIFO (the check runs in a thread with a deadline,
/// so a regression fails rather than hangs).
#[test]
fn a_fifo_or_directory_in_place_of_a_model_file_is_refused_without_blocking() {
    for (file, make_fifo) in [
        ("config.json", true),
        ("model.safetensors", true),
        ("model.safetensors", false),
    ] {
        let dir = synth_folder(
            &format!("err-special-{}-{make_fifo}", file.replace('.', "-")),
            "tiny",
            0,
        );
        let p = dir.join(file);
        std::fs::remove_file(&p).unwrap();
        if make_fifo {
            let ok = std::process::Command::new("mkfifo")
                .arg(&p)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mkfifo {}", p.display());
        } else {
            std::fs::create_dir(&p).unwrap();
        }
        let e = open_err_within(&dir, 20);
        let want = if make_fifo {
            "not a regular file"
        } else {
            "is a directory"
        };
        assert!(e.contains(file) && e.contains(want), "{e}");
    }
}

/// A config.json larger than any real one is refused before it is parsed.
#[test]
fn an_oversized_config_is_refused_naming_the_limit() {
    let dir = synth_folder("err-big-config", "tiny", 0);
    let p = dir.join("config.json");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str(&" ".repeat(2 << 20));
    std::fs::write(&p, text).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("config.json") && e.contains("at most"), "{e}");
}

/// Token counts near usize::MAX are refused by the position check, not
/// wrapped past it.
#[test]
fn a_token_count_near_usize_max_is_refused_not_wrapped() {
    use lockstep::backend::cpu::{CpuBackend, Numerics};
    use lockstep::engine::generate::GenerateOptions;
    use lockstep::engine::Engine;
    let e = Engine::load(
        &Model::open("synth:tiny").unwrap(),
        CpuBackend::new(Numerics::Bf16),
    )
    .unwrap();
    for n in [usize::MAX, usize::MAX - 3] {
        let opts = GenerateOptions {
            max_tokens: n,
            ..Default::default()
        };
        let err = e
            .generate(&[1, 2, 3], &opts, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_position_embeddings"), "{err}");
        let err = e
            .decode_greedy(
                &[1, 2, 3],
                n,
                lockstep::backend::AttnPath::Graph,
                &mut |_| {},
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_position_embeddings"), "{err}");
    }
}

/// transformers 5's spelling of the expert count (`num_local_experts`) opens
/// the same model as the hub's (`num_experts`): same config, same hash. Both
/// given and disagreeing is refused naming both.
#[test]
fn num_local_experts_is_read_as_num_experts_and_a_disagreement_refused() {
    let hub = synth_folder("cfg-moe-hub", "tiny-moe", 0);
    let t5 = synth_folder("cfg-moe-t5", "tiny-moe", 0);
    edit_config(&t5, |m| {
        let n = m.remove("num_experts").unwrap();
        m.insert("num_local_experts".into(), n);
    });
    let (a, b) = (
        Model::open_dir(&hub).unwrap(),
        Model::open_dir(&t5).unwrap(),
    );
    assert_eq!(a.config, b.config);
    edit_config(&t5, |m| {
        m.insert("num_experts".into(), 7.into());
    });
    let e = open_err(&t5);
    assert!(
        e.contains("num_experts") && e.contains("num_local_experts says 8"),
        "{e}"
    );
    edit_config(&t5, |m| {
        m.remove("num_experts");
        m.remove("num_local_experts");
    });
    let e = open_err(&t5);
    assert!(e.contains("`num_experts`") && e.contains("missing"), "{e}");
}

/// An absent head_dim is derived as transformers derives it; where it cannot
/// be, the error names the field.
#[test]
fn an_absent_head_dim_is_derived_or_refused_by_name() {
    use lockstep::model::config::Qwen3Config;
    let dir = synth_folder("cfg-head-dim", "tiny", 0);
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let m = v.as_object_mut().unwrap();
    m.remove("head_dim");
    m.insert("hidden_size".into(), 128.into()); // 4 heads of 32, as tiny has
    let c = Qwen3Config::from_json_str(&v.to_string(), Path::new("x/config.json")).unwrap();
    assert_eq!(c.head_dim, 32);
    v["hidden_size"] = 130.into();
    let e = Qwen3Config::from_json_str(&v.to_string(), Path::new("x/config.json"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("head_dim") && e.contains("not a multiple"),
        "{e}"
    );
}

/// Attention other than full causal attention on every layer is refused,
/// naming the field, where it used to be run as full attention; the fields
/// as the hub and transformers write them for full attention are accepted.
#[test]
fn sliding_window_and_other_layer_types_are_refused_by_name() {
    let dir = synth_folder("cfg-window", "tiny", 0);
    edit_config(&dir, |m| {
        m.insert("sliding_window".into(), 4096.into());
        m.insert(
            "layer_types".into(),
            serde_json::json!([
                "full_attention",
                "full_attention",
                "full_attention",
                "full_attention"
            ]),
        );
    });
    Model::open_dir(&dir).unwrap();
    edit_config(&dir, |m| {
        m.insert("use_sliding_window".into(), true.into());
    });
    let e = open_err(&dir);
    assert!(
        e.contains("use_sliding_window") && e.contains("not implemented"),
        "{e}"
    );
    edit_config(&dir, |m| {
        m.insert("use_sliding_window".into(), false.into());
        m["layer_types"][2] = "sliding_attention".into();
    });
    let e = open_err(&dir);
    assert!(
        e.contains("layer_types[2]") && e.contains("sliding_attention"),
        "{e}"
    );
    edit_config(&dir, |m| {
        m.insert("layer_types".into(), serde_json::json!(["full_attention"]));
    });
    let e = open_err(&dir);
    assert!(
        e.contains("layer_types") && e.contains("1 entries for 4 layers"),
        "{e}"
    );
}

/// A 1 KB config naming 4096 layers of 4096 experts is refused at its
/// first missing tensor without listing the 50 million it names (the
/// check runs with a deadline: a regression fails rather than swaps).
#[test]
fn a_config_naming_millions_of_tensors_is_refused_at_the_first_missing_one() {
    let dir = synth_folder("err-huge-config", "tiny-moe", 0);
    edit_config(&dir, |m| {
        m.insert("num_hidden_layers".into(), 4096.into());
        m.insert("num_experts".into(), 4096.into());
        m.insert("num_experts_per_tok".into(), 8.into());
    });
    let e = open_err_within(&dir, 20);
    assert!(e.contains("missing") || e.contains("shape"), "{e}");
    assert!(e.contains("model.layers."), "{e}");
}

/// A model larger than the host's available memory is refused by the CPU
/// reference before any tensor is read.
#[test]
fn a_model_larger_than_host_memory_is_refused_up_front() {
    use lockstep::backend::cpu::{CpuBackend, Numerics};
    use lockstep::backend::Backend;
    use lockstep::engine::{resident_bytes, Engine};
    let m = Model::open("synth:qwen3-30b-a3b").unwrap();
    let be = CpuBackend::new(Numerics::Bf16);
    let free = be.free_memory().expect("Linux reports MemAvailable");
    if free >= resident_bytes(&m.config) {
        eprintln!(
            "SKIPPED a_model_larger_than_host_memory_is_refused_up_front: this host has {} GiB available, enough for qwen3-30b-a3b",
            free >> 30
        );
        return;
    }
    let t = std::time::Instant::now();
    let e = Engine::load(&m, be).err().expect("refused").to_string();
    assert!(e.contains("needs about") && e.contains("cpu has"), "{e}");
    assert!(
        t.elapsed().as_secs() < 5,
        "refused only after {:?}",
        t.elapsed()
    );
}

/// Zero-width experts and an empty shard name are refused by name.
#[test]
fn zero_width_experts_and_an_empty_shard_name_are_refused() {
    let dir = synth_folder("err-zero-experts", "tiny-moe", 0);
    edit_config(&dir, |m| {
        m.insert("moe_intermediate_size".into(), 0.into());
    });
    let e = open_err(&dir);
    assert!(
        e.contains("moe_intermediate_size") && e.contains("must be positive"),
        "{e}"
    );

    let dir = synth_folder("err-empty-shard", "tiny", 0);
    let names: Vec<String> = {
        let m = Model::open_dir(&dir).unwrap();
        m.expected_tensors().into_iter().map(|t| t.name).collect()
    };
    let mut map = serde_json::Map::new();
    for n in names {
        map.insert(n, "model.safetensors".into());
    }
    map.insert("model.norm.weight".into(), "".into());
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": map}).to_string(),
    )
    .unwrap();
    let e = open_err(&dir);
    assert!(
        e.contains("index.json") && e.contains("empty file name"),
        "{e}"
    );
}
