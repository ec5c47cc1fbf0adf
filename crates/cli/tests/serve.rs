//! `gptoss serve` driven by the official `openai` Python package (tests/server/*.py).
//!
//! The servers run the tiny synthetic checkpoint with the full o200k vocabulary: one on the
//! cpu backend (random babble: plain and streaming calls, errors, the load test), and two on
//! the "script" test backend (tests/plugins/script), which makes the model emit a fixed harmony
//! token script: reasoning then a tool call, or reasoning then a final answer.
//!
//! Python: `$GPTOSS_PYTHON` (default `python3`) with `openai` and `pytest` installed; .ci/run
//! makes a virtual environment with both. A missing package fails the test (never skips it).

mod synthetic;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gptoss_models::tokenizer::Tokenizer;

const GPTOSS: &str = env!("CARGO_BIN_EXE_gptoss");

struct Server {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `gptoss serve` on a free port and waits for its "listening" line and /health.
    fn start(model: &Path, args: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(GPTOSS);
        cmd.args(["serve", "--model"])
            .arg(model)
            .args(["--port", "0", "--threads", "1"])
            .args(args)
            .env_remove("GPTOSS_API_KEY")
            .env_remove("GPTOSS_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start gptoss serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(url);
                }
                log2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("gptoss serve did not start:\n{}", log.lock().unwrap());
            }
        };
        let s = Server { child, url, log };
        s.wait_healthy();
        s
    }

    fn wait_healthy(&self) {
        let t = Instant::now();
        let py = format!(
            "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('{}/health', timeout=5).status == 200 else 1)",
            self.url
        );
        while t.elapsed() < Duration::from_secs(60) {
            if Command::new(python())
                .args(["-c", &py])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{} never became healthy:\n{}", self.url, self.log());
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then the exit status (graceful shutdown must exit 0).
    fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("gptoss serve ignored SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> String {
    std::env::var("GPTOSS_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Checks that Python has the packages; a missing one fails with what to install.
fn require_python() {
    let ok = Command::new(python())
        .args(["-c", "import openai, pytest"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "these tests need Python with the `openai` and `pytest` packages: run .ci/run, or \
         `pip install openai pytest` (or set GPTOSS_PYTHON to a python that has them)"
    );
}

/// The script plugin library (built as a dev-dependency), copied alone into a folder for
/// $GPTOSS_PLUGIN_PATH.
fn script_plugin_dir() -> tempfile::TempDir {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let file = format!(
        "{}gptoss_backend_script{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let src = [deps.join(&file), deps.join("..").join(&file)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{file} not built next to {}", deps.display()));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&src, dir.path().join(&file)).unwrap();
    dir
}

fn script(text: &str) -> String {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let ids = tok.encode_with_special(text).unwrap();
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

pub const REASONING: &str = "The user asks for the weather in Paris. I should call get_weather.";
pub const ARGS: &str = r#"{"location": "Paris, France", "unit": "celsius"}"#;
pub const ANSWER_REASONING: &str = "The tool said 21 degrees and sunny.";
pub const ANSWER: &str = "It is 21 °C and sunny in Paris.";

/// Runs pytest on `file` with `envs`; pytest's exit code 5 (no tests ran) is a failure too.
fn pytest(file: &str, envs: &[(&str, String)]) {
    let mut cmd = Command::new(python());
    cmd.args(["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"])
        .arg(repo_root().join(file));
    // e.g. GPTOSS_PYTEST_ARGS="-k tool" to run some tests only while developing.
    if let Ok(extra) = std::env::var("GPTOSS_PYTEST_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let status = cmd.status().expect("run pytest");
    match status.code() {
        Some(0) => {}
        Some(5) => panic!("pytest collected no tests from {file}"),
        other => panic!("pytest {file} failed: exit {other:?}"),
    }
}

#[test]
fn openai_python_client_against_the_server() {
    require_python();
    let model = synthetic::model_dir();
    let plugins = script_plugin_dir();
    let plugin_path = plugins.path().to_str().unwrap().to_string();
    let tool_script = script(&format!(
        "<|channel|>analysis<|message|>{REASONING}<|end|><|start|>assistant<|channel|>commentary \
         to=functions.get_weather <|constrain|>json<|message|>{ARGS}<|call|>"
    ));
    let answer_script = script(&format!(
        "<|channel|>analysis<|message|>{ANSWER_REASONING}<|end|><|start|>assistant<|channel|>final\
         <|message|>{ANSWER}<|return|>"
    ));
    let cpu = Server::start(
        model.path(),
        &[
            "--backend",
            "cpu",
            "--max-context",
            "2048",
            "--api-key",
            "test-key",
        ],
        &[],
    );
    let tool = Server::start(
        model.path(),
        &["--backend", "script"],
        &[
            ("GPTOSS_PLUGIN_PATH", &plugin_path),
            ("GPTOSS_SCRIPT", &tool_script),
        ],
    );
    let answer = Server::start(
        model.path(),
        &["--backend", "script"],
        &[
            ("GPTOSS_PLUGIN_PATH", &plugin_path),
            ("GPTOSS_SCRIPT", &answer_script),
        ],
    );
    let small = Server::start(
        model.path(),
        &[
            "--backend",
            "cpu",
            "--max-context",
            "2048",
            "--max-batch",
            "1",
            "--queue",
            "1",
            "--shutdown-timeout",
            "1",
        ],
        &[],
    );
    pytest(
        "tests/server/test_openai.py",
        &[
            ("GPTOSS_CPU_URL", cpu.url.clone()),
            ("GPTOSS_TOOL_URL", tool.url.clone()),
            ("GPTOSS_ANSWER_URL", answer.url.clone()),
            ("GPTOSS_SMALL_URL", small.url.clone()),
            ("GPTOSS_TEST_KEY", "test-key".into()),
            ("EXPECT_REASONING", REASONING.into()),
            ("EXPECT_ARGS", ARGS.into()),
            ("EXPECT_ANSWER_REASONING", ANSWER_REASONING.into()),
            ("EXPECT_ANSWER", ANSWER.into()),
        ],
    );
    // Still serving after every error case, and a clean exit on SIGTERM.
    cpu.wait_healthy();
    let log = cpu.log();
    assert!(
        !log.contains("test-key"),
        "the API key reached the log:\n{log}"
    );
    let status = cpu.stop();
    assert!(status.success(), "exit after SIGTERM: {status}");
    drop((tool, answer));
    shutdown_ends_a_running_stream_cleanly(small);
}

/// SIGTERM while a long stream runs: the stream gets its final chunk and [DONE] (ended after
/// --shutdown-timeout 1 s with finish_reason "length"), and the server exits 0.
fn shutdown_ends_a_running_stream_cleanly(server: Server) {
    let code = r#"
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/v1/chat/completions", method="POST",
    headers={"Content-Type": "application/json"},
    data=json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1900,
                     "stream": True, "temperature": 0}).encode())
with urllib.request.urlopen(req, timeout=60) as r:
    first = True
    for line in r:
        if first:
            print("started", flush=True)
            first = False
        if line.startswith(b"data:"):
            print(line.decode().strip(), flush=True)
"#;
    let mut client = Command::new(python())
        .args(["-c", code, &server.url])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the streaming client");
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "started", "{}", server.log());
    let t = Instant::now();
    let status = server.stop();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(client.wait().unwrap().success());
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(t.elapsed() < Duration::from_secs(20));
    let finish = rest
        .lines()
        .filter(|l| l.contains("\"finish_reason\":\"length\""))
        .count();
    assert_eq!(finish, 1, "no final chunk in:\n{rest}");
    assert_eq!(rest.lines().last(), Some("data: [DONE]"), "{rest}");
}

#[test]
fn load_64_concurrent_streams_match_sequential_greedy() {
    require_python();
    let model = synthetic::model_dir();
    let cpu = Server::start(
        model.path(),
        &[
            "--backend",
            "cpu",
            "--max-context",
            "1024",
            "--max-batch",
            "64",
        ],
        &[],
    );
    let out = Command::new(python())
        .arg(repo_root().join("tests/server/load_test.py"))
        .env("GPTOSS_URL", &cpu.url)
        .output()
        .expect("run load_test.py");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "load test failed:\n{}", cpu.log());
    assert!(
        text.contains("64/64 streams complete and identical"),
        "{text}"
    );
    assert!(cpu.stop().success());
}
