//! `gptoss chat` driven as a user drives it: in a terminal (tmux), typing questions and
//! commands, pressing Ctrl-C during a reply and Ctrl-D at the prompt.
//!
//! Needs tmux (`.ci/run` installs it); without it the test fails and says so.

mod synthetic;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A private tmux server (its own socket) that is killed when dropped.
struct Tmux {
    socket: String,
    _conf: tempfile::NamedTempFile,
}

impl Tmux {
    fn start() -> Tmux {
        let found = Command::new("tmux").arg("-V").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "tmux is needed to drive `gptoss chat` in a terminal: install it \
             (apt-get install -y tmux); .ci/run does"
        );
        let conf = tempfile::NamedTempFile::new().unwrap();
        // Keep the pane after gptoss exits, to read its exit status.
        std::fs::write(
            conf.path(),
            "set -g remain-on-exit on\nset -g history-limit 5000\n",
        )
        .unwrap();
        Tmux {
            socket: format!("gptoss-chat-test-{}", std::process::id()),
            _conf: conf,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("-f")
            .arg(self._conf.path())
            .args(args)
            .env_remove("GPTOSS_CONFIG")
            .env_remove("TMUX")
            .output()
            .expect("runs tmux")
    }

    /// Starts `argv` in a new window named `name`, through `sh`, which prints the exit
    /// status when it ends (the shell ignores SIGINT, so Ctrl-C reaches only gptoss, as
    /// from an interactive shell; gptoss installs its own handler).
    fn spawn(&self, name: &str, argv: &[&str]) {
        let script = "trap '' INT; \"$@\"; echo \"gptoss exited with status $?\"";
        let mut args = vec![
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "160",
            "-y",
            "50",
            "sh",
            "-c",
            script,
            "sh",
        ];
        args.extend_from_slice(argv);
        let o = self.run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    fn screen(&self, name: &str) -> String {
        let o = self.run(&["capture-pane", "-p", "-J", "-t", name, "-S", "-5000"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn keys(&self, name: &str, text: &str) {
        assert!(self
            .run(&["send-keys", "-t", name, "-l", text])
            .status
            .success());
    }

    fn key(&self, name: &str, key: &str) {
        assert!(self.run(&["send-keys", "-t", name, key]).status.success());
    }

    fn line(&self, name: &str, text: &str) {
        self.keys(name, text);
        self.key(name, "Enter");
    }

    /// Waits until `done(screen)` holds; fails with the screen after `secs`.
    fn wait(&self, name: &str, secs: u64, what: &str, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen(name);
            if done(&s) {
                return s;
            }
            if start.elapsed() > Duration::from_secs(secs) {
                panic!("timed out waiting for {what}; the screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The exit status gptoss ended with.
    fn exit_status(&self, name: &str) -> i32 {
        let s = self.wait(name, 20, "gptoss to exit", |s| {
            s.contains("gptoss exited with status")
        });
        let tail = s.split("gptoss exited with status ").nth(1).unwrap();
        tail.split_whitespace().next().unwrap().parse().unwrap()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn count(s: &str, needle: &str) -> usize {
    s.matches(needle).count()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn chat_in_a_terminal() {
    let model = synthetic::model_dir();
    let work = tempfile::tempdir().unwrap();
    let saved = work.path().join("conv.json");
    let saved2 = work.path().join("conv2.json");
    let tmux = Tmux::start();
    let bin = env!("CARGO_BIN_EXE_gptoss");
    let m = model.path().to_str().unwrap();
    // Replies end at 40 tokens, or earlier at Ctrl-C.
    tmux.spawn(
        "c",
        &[
            bin,
            "chat",
            "--model",
            m,
            "--backend",
            "cpu",
            "--seed",
            "11",
            "--max-tokens",
            "40",
            "--date",
            "2025-06-28",
        ],
    );
    tmux.wait("c", 60, "the banner and prompt", |s| {
        s.contains("/help lists commands") && s.contains("> ")
    });

    // Ask; the reply streams and ends at max tokens; markup never shows.
    tmux.line("c", "What is 2 + 2?");
    let s = tmux.wait("c", 60, "the first reply", |s| count(s, "[cut at") == 1);
    let reply = &s[s.find("What is 2 + 2?").unwrap()..s.find("[cut at").unwrap()];
    assert!(
        ["Hello", "world", "analysis", "final", "."]
            .iter()
            .any(|w| reply.contains(w))
            || reply.contains("thinking…"),
        "no reply shown: {s}"
    );
    assert!(!s.contains("<|"), "markup on screen: {s}");
    tmux.wait("c", 10, "the prompt again", |s| s.trim_end().ends_with('>'));

    // Reasoning shown, then collapsed; effort changed.
    tmux.line("c", "/think on");
    tmux.wait("c", 10, "/think on", |s| s.contains("reasoning shown"));
    tmux.line("c", "/reasoning high");
    tmux.wait("c", 10, "/reasoning", |s| {
        s.contains("reasoning effort: high")
    });
    tmux.line("c", "/reasoning extreme");
    tmux.wait("c", 10, "a bad effort refused", |s| {
        s.contains("must be low, medium or high")
    });
    tmux.line("c", "Tell me more.");
    tmux.wait("c", 60, "the second reply", |s| count(s, "[cut at") == 2);

    // The history holds both turns, with the effort.
    tmux.line("c", &format!("/save {}", saved.display()));
    tmux.wait("c", 10, "/save", |s| s.contains("saved 4 messages"));
    let j = read_json(&saved);
    let msgs = j["messages"].as_array().unwrap();
    let roles: Vec<&str> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"], "{j}");
    assert_eq!(msgs[0]["content"], "What is 2 + 2?");
    assert_eq!(msgs[2]["content"], "Tell me more.");
    assert_eq!(j["reasoning_effort"], "high");

    // Ctrl-C at the prompt does not leave.
    tmux.key("c", "C-c");
    tmux.wait("c", 10, "the Ctrl-C hint", |s| {
        s.contains("/quit or Ctrl-D leaves")
    });

    // /system, /reset, unknown commands.
    tmux.line("c", "/system Answer in French.");
    tmux.wait("c", 10, "/system", |s| {
        s.contains("system instructions set")
    });
    tmux.line("c", "/reset");
    tmux.wait("c", 10, "/reset", |s| s.contains("conversation cleared"));
    tmux.line("c", "/frobnicate");
    tmux.wait("c", 10, "unknown command", |s| {
        s.contains("unknown command /frobnicate")
    });
    tmux.line("c", &format!("/save {}", saved2.display()));
    tmux.wait("c", 10, "second /save", |s| s.contains("saved 1 messages"));
    let j = read_json(&saved2);
    assert_eq!(j["messages"][0]["role"], "system");
    assert_eq!(j["messages"][0]["content"], "Answer in French.");

    tmux.line("c", "/quit");
    assert_eq!(tmux.exit_status("c"), 0, "{}", tmux.screen("c"));

    // A long reply stopped by Ctrl-C, from a saved conversation; Ctrl-D leaves.
    tmux.spawn(
        "d",
        &[
            bin,
            "chat",
            "--model",
            m,
            "--seed",
            "3",
            "--max-tokens",
            "3900",
            "--conversation",
            saved.to_str().unwrap(),
        ],
    );
    tmux.wait("d", 60, "the banner", |s| s.contains("reasoning high"));
    tmux.line("d", "Count to a million.");
    // Output streams while the reply is still running (it would take seconds more to finish).
    let before = tmux.wait("d", 60, "streamed output", |s| {
        let after = s.split("Count to a million.").nth(1).unwrap_or("");
        after.trim().len() > 20
    });
    assert!(!before.contains("[stopped]"));
    tmux.key("d", "C-c");
    let s = tmux.wait("d", 20, "the reply stopped", |s| s.contains("[stopped]"));
    assert!(!s.contains("[cut at"), "the reply ran to the end: {s}");
    tmux.wait("d", 10, "the prompt after Ctrl-C", |s| {
        s.trim_end().ends_with('>')
    });
    tmux.line("d", "/help");
    tmux.wait("d", 10, "/help", |s| {
        s.contains("/reasoning low|medium|high")
    });
    tmux.key("d", "C-d");
    assert_eq!(tmux.exit_status("d"), 0, "{}", tmux.screen("d"));
}
