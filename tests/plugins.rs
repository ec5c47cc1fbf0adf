//! Backend plugins loaded for real through the C ABI: the cpu and example plugins against the
//! transformers fixtures, and every refusal and failure a plugin can cause.
//!
//! The plugin libraries are the cdylibs of workspace members (crates/backends/cpu,
//! plugins/example-backend, tests/plugins/*). This crate lists them as dev-dependencies so
//! cargo builds them before these tests run; see `plugin_path`.

use std::path::{Path, PathBuf};

use gptoss_core::plugin::abi::GPTOSS_ABI_VERSION;
use gptoss_core::plugin::registry::{self, choose, discover, plugin_file_name, Offer};
use gptoss_core::plugin::{Plugin, PluginOptions};
use gptoss_core::{Backend, DType, Graph, Op, TensorDesc, ValueKind};
use gptoss_e2e::{check_fixture_prompts, fixture_dir, Reference, FIXTURES};
use gptoss_models::Model;

/// target/<profile>, from this test binary at target/<profile>/deps/plugins-<hash>.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| {
            panic!(
                "test binary {} is not in target/<profile>/deps",
                exe.display()
            )
        })
        .to_path_buf()
}

/// The built plugin library of backend `name`; a missing one fails the test, never skips it.
fn plugin_path(name: &str) -> PathBuf {
    let file = plugin_file_name(name);
    let dir = target_dir();
    // As dev-dependencies of this crate they are built into target/<profile>/deps/, fresh for
    // this test binary; `cargo build --workspace` also copies them to target/<profile>/.
    for p in [dir.join("deps").join(&file), dir.join(&file)] {
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "plugin library {file} is missing from {} and its deps/ folder: it is built by the \
         workspace member whose lib is named {}; run `cargo build --workspace` (or \
         `cargo test --workspace`) first",
        dir.display(),
        file.trim_start_matches("lib")
            .split('.')
            .next()
            .unwrap_or(&file)
    )
}

fn load(name: &str) -> Plugin {
    let path = plugin_path(name);
    Plugin::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load_err(path: &Path) -> String {
    match Plugin::load(path) {
        Ok(p) => panic!("{} loaded as {p:?}, expected a refusal", path.display()),
        Err(e) => e.to_string(),
    }
}

fn offer(p: &Plugin) -> Offer {
    let report = p.probe().expect("probe");
    let best = report.devices.iter().max_by_key(|d| d.score);
    Offer {
        name: p.name.clone(),
        score: report.best_score(),
        reason: best.map(|d| d.reason.clone()).unwrap_or_default(),
    }
}

// ---- the real backends through the ABI ----

fn model_on(plugin: &Plugin, fixture: &str) -> Model {
    let backend = plugin
        .create(&PluginOptions::default())
        .expect("create an instance");
    let model = Model::load(&fixture_dir(fixture), Box::new(backend), &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{fixture} on plugin {}: {e}", plugin.name));
    assert_eq!(model.backend_name(), plugin.name);
    model
}

/// Prefill, token-by-token decoding and greedy generation against transformers.
fn passes_the_fixtures(name: &str) {
    let plugin = load(name);
    assert_eq!(plugin.name, name);
    assert_eq!(plugin.abi_version, GPTOSS_ABI_VERSION);
    for fixture in FIXTURES {
        let mut model = model_on(&plugin, fixture);
        let r = Reference::load(fixture);
        check_fixture_prompts(
            &mut model,
            fixture,
            usize::MAX,
            &format!("prefill ({name} plugin)"),
        );
        check_fixture_prompts(
            &mut model,
            fixture,
            1,
            &format!("incremental ({name} plugin)"),
        );
        let want = r.tokens("greedy_tokens");
        let got = model
            .generate_greedy(&r.tokens("greedy_prompt"), want.len(), &[], 0, &mut |_| {})
            .unwrap();
        assert_eq!(got, want, "{name} plugin, {fixture}: greedy continuation");
        // Several sequences per step over a paged KV pool (what `gptoss serve` runs), through
        // the ABI (PagedAttention and GatherRows crossing the codec).
        gptoss_e2e::batch_check::check_batched_prompts(&mut model, fixture);
    }
}

#[test]
fn cpu_plugin_passes_the_fixtures() {
    passes_the_fixtures("cpu");
}

#[test]
fn example_plugin_passes_the_fixtures() {
    passes_the_fixtures("example");
}

#[test]
fn example_plugin_scores_one_and_does_not_outrank_cpu() {
    let (cpu, example) = (load("cpu"), load("example"));
    assert_eq!(example.version, "0.1.0");
    let o = offer(&example);
    assert_eq!(
        (o.score, o.reason.as_str()),
        (1, "example plugin (reference loops, slow)")
    );
    let offers = [o, offer(&cpu)];
    let preference: Vec<String> = ["cuda-mxfp4", "cuda-bf16", "wgpu", "cpu"]
        .map(String::from)
        .to_vec();
    assert_eq!(
        offers[choose(&offers, None, &preference).unwrap()].name,
        "cpu"
    );
    assert_eq!(offers[choose(&offers, None, &[]).unwrap()].name, "cpu");
    assert_eq!(
        offers[choose(&offers, Some("example"), &preference).unwrap()].name,
        "example"
    );
}

// ---- refusals ----

#[test]
fn abi_version_mismatch_is_refused_naming_both_versions() {
    let path = plugin_path("abi_mismatch");
    let e = load_err(&path);
    assert!(
        e.contains(&format!("plugin ABI version {}", GPTOSS_ABI_VERSION + 1))
            && e.contains(&format!("this gptoss speaks version {GPTOSS_ABI_VERSION}"))
            && e.contains(&path.display().to_string()),
        "{e}"
    );
}

#[test]
fn missing_entry_symbol_is_refused() {
    let path = plugin_path("no_entry");
    let e = load_err(&path);
    assert!(
        e.contains("does not export gptoss_backend_entry")
            && e.contains("not a gptoss backend plugin")
            && e.contains(&path.display().to_string()),
        "{e}"
    );
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(plugin_file_name("garbage"));
    std::fs::write(&path, "this is a text file, not a shared library\n").unwrap();
    let e = load_err(&path);
    assert!(
        e.contains("not a loadable plugin library") && e.contains(&path.display().to_string()),
        "{e}"
    );
}

#[test]
fn zero_score_plugin_gives_its_reason_and_cannot_be_forced() {
    let zero = load("zero_score");
    assert_eq!(zero.name, "zero-score");
    let report = zero.probe().unwrap();
    assert_eq!(report.devices.len(), 1);
    assert_eq!(report.devices[0].score, 0);
    assert_eq!(
        report.devices[0].reason,
        "needs a flux capacitor, found none"
    );
    // An instance's probe, through the ABI, says the same.
    let instance = zero.create(&PluginOptions::default()).unwrap();
    assert_eq!(instance.probe(), report);

    let offers = [offer(&zero), offer(&load("cpu"))];
    let e = choose(&offers, Some("zero-score"), &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("zero-score")
            && e.contains("cannot run here: needs a flux capacitor, found none")
            && e.contains("usable here: cpu (score 1)"),
        "{e}"
    );
    // Auto-selection passes over it.
    assert_eq!(offers[choose(&offers, None, &[]).unwrap()].name, "cpu");
}

/// A graph of one `op` over F32 [2, 3] buffers `a` (and `b`), writing `out`.
fn one_op_graph(
    op: Op,
    a: gptoss_core::BufferId,
    b: Option<gptoss_core::BufferId>,
    out: (gptoss_core::BufferId, TensorDesc),
) -> Graph {
    let x = TensorDesc::new(DType::F32, [2, 3]);
    let mut g = Graph::new();
    let mut inputs = vec![g.add_value("a", x.clone(), ValueKind::Input(a))];
    if let Some(b) = b {
        inputs.push(g.add_value("b", x, ValueKind::Input(b)));
    }
    let o = g.add_value("out", out.1, ValueKind::Output(out.0));
    g.push(op, inputs, vec![o]);
    g
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn a_plugin_that_panics_or_fails_inside_a_call_is_reported_and_keeps_working() {
    let faulty = load("faulty");
    let mut be = faulty.create(&PluginOptions::default()).unwrap();
    let x = TensorDesc::new(DType::F32, [2, 3]);
    let (a_data, b_data) = ([1.0f32, 5.0, 2.0, -1.0, 0.5, 7.0], [1.0f32; 6]);
    let a = be.alloc(&x).unwrap();
    let b = be.alloc(&x).unwrap();
    let sum = be.alloc(&x).unwrap();
    be.upload(a, &f32_bytes(&a_data)).unwrap();
    be.upload(b, &f32_bytes(&b_data)).unwrap();

    // The Add kernel panics: an error naming the plugin and the panic, not an abort.
    let add = one_op_graph(Op::Add, a, Some(b), (sum, x.clone()));
    let e = be.execute(&add).unwrap_err().to_string();
    assert!(
        e.contains("faulty") && e.contains("panicked") && e.contains("the add kernel blew a fuse"),
        "{e}"
    );

    // The instance still works: buffers are intact, other ops run.
    assert_eq!(be.download(a).unwrap(), f32_bytes(&a_data));
    assert_eq!(be.download(sum).unwrap(), f32_bytes(&[0.0; 6]));
    let last_desc = TensorDesc::new(DType::F32, [1, 3]);
    let last = be.alloc(&last_desc).unwrap();
    be.execute(&one_op_graph(Op::LastRow, a, None, (last, last_desc)))
        .unwrap();
    assert_eq!(be.download(last).unwrap(), f32_bytes(&[-1.0, 0.5, 7.0]));

    // The Argmax kernel returns an error: its text comes back through the ABI.
    let ids_desc = TensorDesc::new(DType::I32, [2]);
    let ids = be.alloc(&ids_desc).unwrap();
    let argmax = one_op_graph(Op::Argmax, a, None, (ids, ids_desc));
    let e = be.execute(&argmax).unwrap_err().to_string();
    assert_eq!(e, "backend 'faulty': argmax (out): argmax refused");

    // An op the plugin has no kernel for is reported as unsupported, naming the op.
    let (w_desc, out_desc) = (TensorDesc::new(DType::F32, [3]), x.clone());
    let (w, normed) = (be.alloc(&w_desc).unwrap(), be.alloc(&out_desc).unwrap());
    let mut norm = Graph::new();
    let xv = norm.add_value("x", x.clone(), ValueKind::Input(a));
    let wv = norm.add_value("w", w_desc, ValueKind::Weight(w));
    let ov = norm.add_value("normed", out_desc, ValueKind::Output(normed));
    norm.push(Op::RmsNorm { eps: 1e-5 }, vec![xv, wv], vec![ov]);
    match be.execute(&norm) {
        Err(e @ gptoss_core::Error::Unsupported { .. }) => assert_eq!(
            e.to_string(),
            "backend 'faulty' does not support op 'rms_norm'"
        ),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(!e.contains("panicked"), "{e}");

    // Again, to show neither failure poisoned anything.
    let e = be.execute(&add).unwrap_err().to_string();
    assert!(e.contains("panicked"), "{e}");
    let e = be.execute(&argmax).unwrap_err().to_string();
    assert!(e.contains("argmax refused"), "{e}");
    be.upload(b, &f32_bytes(&[2.0; 6])).unwrap();
    assert_eq!(be.download(b).unwrap(), f32_bytes(&[2.0; 6]));
    for id in [a, b, sum, last, ids, w, normed] {
        be.free(id).unwrap();
    }
    assert!(be.download(a).is_err(), "a freed buffer is gone");
    // And a fresh instance of the same plugin is fine too.
    let mut again = faulty.create(&PluginOptions::default()).unwrap();
    let c = again.alloc(&x).unwrap();
    again.upload(c, &f32_bytes(&a_data)).unwrap();
    assert_eq!(again.download(c).unwrap(), f32_bytes(&a_data));
}

// ---- discovery ----

fn copy_into(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(plugin_file_name(name));
    std::fs::copy(plugin_path(name), &to)
        .unwrap_or_else(|e| panic!("copy {name} into {}: {e}", dir.display()));
    to
}

#[test]
fn discover_loads_plugins_and_lists_rejections_with_reasons() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    for name in ["cpu", "example", "abi_mismatch", "no_entry"] {
        copy_into(first.path(), name);
    }
    let garbage = first.path().join(plugin_file_name("garbage"));
    std::fs::write(&garbage, "not a library").unwrap();
    // Files not named like plugins are ignored.
    std::fs::write(first.path().join("README.txt"), "hello").unwrap();
    std::fs::copy(
        plugin_path("zero_score"),
        first.path().join("libunrelated.so"),
    )
    .unwrap();
    let example_again = copy_into(second.path(), "example");

    let dirs = vec![
        first.path().to_path_buf(),
        second.path().to_path_buf(),
        first.path().join("does-not-exist"),
    ];
    let d = discover(&dirs);
    assert_eq!(d.searched, dirs);

    let mut names: Vec<&str> = d.plugins.iter().map(|p| p.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["cpu", "example"]);
    for p in &d.plugins {
        assert_eq!(p.path.parent(), Some(first.path()), "{p:?}");
    }

    let reason = |file: &Path| -> &str {
        d.rejected
            .iter()
            .find(|(p, _)| p == file)
            .map(|(_, r)| r.as_str())
            .unwrap_or_else(|| panic!("{} not rejected: {:?}", file.display(), d.rejected))
    };
    assert_eq!(d.rejected.len(), 4, "{:?}", d.rejected);
    let r = reason(&first.path().join(plugin_file_name("abi_mismatch")));
    assert!(
        r.contains(&format!("ABI version {}", GPTOSS_ABI_VERSION + 1)),
        "{r}"
    );
    let r = reason(&first.path().join(plugin_file_name("no_entry")));
    assert!(r.contains("not a gptoss backend plugin"), "{r}");
    let r = reason(&garbage);
    assert!(r.contains("not a loadable plugin library"), "{r}");
    let r = reason(&example_again);
    let first_example = first.path().join(plugin_file_name("example"));
    assert!(
        r.contains("plugin 'example' already loaded from")
            && r.contains(&first_example.display().to_string()),
        "{r}"
    );

    // The discovered plugins work.
    let cpu = d.plugins.iter().find(|p| p.name == "cpu").unwrap();
    assert_eq!(offer(cpu).score, 1);
}

#[test]
fn search_dirs_put_config_dirs_first_then_the_executable_folder() {
    let a = tempfile::tempdir().unwrap();
    let dirs = registry::search_dirs(&[a.path().to_path_buf(), a.path().to_path_buf()]);
    assert_eq!(dirs[0], a.path());
    assert_eq!(
        dirs.iter().filter(|d| *d == a.path()).count(),
        1,
        "{dirs:?}"
    );
    let exe_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    assert_eq!(dirs.last(), Some(&exe_dir));
    assert!(dirs.contains(&exe_dir.join("plugins")), "{dirs:?}");
}
