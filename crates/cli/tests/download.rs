//! `gptoss download` against a hub served on loopback by this test (no traffic leaves the
//! machine): a sharded model is fetched into a fresh HF cache and then runs offline; a hub
//! that cannot be reached gives a clear error at once; a cached model needs no hub at all.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn gptoss(args: &[&str], hf_home: &Path, endpoint: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gptoss"));
    c.args(args)
        .env("HF_HOME", hf_home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("GPTOSS_CONFIG");
    match endpoint {
        Some(e) => c.env("HF_ENDPOINT", e),
        None => c.env("HF_ENDPOINT", "http://127.0.0.1:1"),
    };
    c.output().expect("runs gptoss")
}

/// Serve `dir`'s files as `/{repo}/resolve/main/{file}` the way the hub does (commit and etag
/// headers, byte ranges), one request per connection. Counts the files served in full.
fn serve(dir: PathBuf, repo: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(200) {
            let Ok(stream) = stream else { continue };
            let _ = answer(stream, &dir, repo, &count);
        }
    });
    (format!("http://{addr}"), served)
}

fn answer(
    mut stream: TcpStream,
    dir: &Path,
    repo: &str,
    served: &AtomicUsize,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut range_start = 0usize;
    let mut range_end: Option<usize> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (a, b) = r.trim().split_once('-').unwrap_or((r.trim(), ""));
            range_start = a.parse().unwrap_or(0);
            range_end = b.parse().ok();
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let prefix = format!("/{repo}/resolve/main/");
    let file = path
        .strip_prefix(&prefix)
        .map(|f| dir.join(f))
        .filter(|f| f.is_file());
    let Some(file) = file else {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let mut data = Vec::new();
    std::fs::File::open(&file)?.read_to_end(&mut data)?;
    let end = range_end.unwrap_or(data.len() - 1).min(data.len() - 1);
    let body = &data[range_start.min(data.len())..=end];
    if range_end.is_none() {
        served.fetch_add(1, Ordering::SeqCst);
    }
    let etag = format!(
        "\"etag-{}-{}\"",
        file.file_name().unwrap().to_string_lossy(),
        data.len()
    );
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {range_start}-{end}/{}\r\n\
         x-repo-commit: 0123456789abcdef\r\nETag: {etag}\r\nConnection: close\r\n\r\n",
        body.len(),
        data.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

#[test]
fn downloads_a_sharded_model_into_the_cache_and_runs_it_offline() {
    let hf_home = tempfile::tempdir().unwrap();
    let (endpoint, served) = serve(fixture("tiny-a"), "acme/tiny-a");
    let o = gptoss(
        &["download", "acme/tiny-a"],
        hf_home.path(),
        Some(&endpoint),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("--model acme/tiny-a"), "{out}");
    // config, index and both shards (the optional tokenizer files are 404 on this hub)
    assert_eq!(served.load(Ordering::SeqCst), 4, "{err}");
    // Everything is local now: the model runs with no hub reachable.
    let o = gptoss(
        &[
            "generate",
            "--model",
            "acme/tiny-a",
            "--tokens",
            "1,2,3",
            "--max-tokens",
            "3",
            "--ignore-eos",
        ],
        hf_home.path(),
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8(o.stdout)
            .unwrap()
            .trim()
            .split(',')
            .count(),
        3
    );
    // A second download finds every file in the cache and fetches nothing.
    let o = gptoss(&["download", "acme/tiny-a"], hf_home.path(), None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(served.load(Ordering::SeqCst), 4);
}

#[test]
fn an_unreachable_hub_fails_at_once_with_what_to_do() {
    let hf_home = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let o = gptoss(
        &["download", "openai/gpt-oss-20b"],
        hf_home.path(),
        Some("http://127.0.0.1:1"),
    );
    assert!(!o.status.success());
    assert!(t0.elapsed().as_secs() < 30, "took {:?}", t0.elapsed());
    let e = String::from_utf8_lossy(&o.stderr);
    for needle in [
        "cannot reach the hub at http://127.0.0.1:1",
        "--model",
        "huggingface-cli download openai/gpt-oss-20b",
        hf_home.path().to_str().unwrap(),
    ] {
        assert!(e.contains(needle), "missing {needle:?} in {e}");
    }
}

#[test]
fn a_missing_model_and_a_bad_id_are_named() {
    let hf_home = tempfile::tempdir().unwrap();
    let (endpoint, _) = serve(fixture("tiny-a"), "acme/tiny-a");
    let o = gptoss(
        &["download", "acme/nothing-here"],
        hf_home.path(),
        Some(&endpoint),
    );
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("acme/nothing-here has no file config.json"),
        "{e}"
    );
    let o = gptoss(&["download", "not-an-id"], hf_home.path(), None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a Hugging Face model id"));
}
