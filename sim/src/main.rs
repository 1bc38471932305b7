//! Command-line entry point: parses flags, starts the simulator, prints the
//! one `listening on ...` line that scripts and tests wait for, and runs
//! until interrupted.

use std::io::Write;
use std::process::ExitCode;

use breakwater_sim::{serve, Config};

const USAGE: &str = "\
usage: breakwater-sim [--port N] [--host HOST] [--seed S] [--api-key KEY]

A simulated Anthropic Messages API upstream.

  --port N        port to listen on (default 0: pick a free port)
  --host HOST     interface to bind (default 127.0.0.1)
  --seed S        seed for generated text and the default overload seed (default 0)
  --api-key KEY   require this x-api-key on /v1/* (default: any non-empty key)
  -h, --help      show this help
  -V, --version   show the version

Input tokens are counted with the Claude tokenizer's ranks, read from
node_modules/@anthropic-ai/tokenizer/claude.json (`npm ci`) or the file named by
BREAKWATER_SIM_VOCAB.

Prints `listening on http://HOST:PORT` once ready. Control API: /_sim/*.";

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Config>, String> {
    let mut config = Config::default();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args.next().ok_or_else(|| format!("{name} needs a value")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("breakwater-sim {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--port" => {
                let v = value("--port")?;
                config.port = v.parse().map_err(|_| format!("invalid port {v:?}"))?;
            }
            "--host" => config.host = value("--host")?,
            "--seed" => {
                let v = value("--seed")?;
                config.seed = v.parse().map_err(|_| format!("invalid seed {v:?}"))?;
            }
            "--api-key" => {
                let v = value("--api-key")?;
                if v.is_empty() {
                    return Err("--api-key must not be empty".into());
                }
                config.api_key = Some(v);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(config))
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(Some(c)) => c,
        Ok(None) => return ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("breakwater-sim: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (addr, handle) = match serve(config).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("breakwater-sim: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{addr}");
    let _ = out.flush();
    drop(out);
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate() => {}
    }
    handle.shutdown().await;
    ExitCode::SUCCESS
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Config>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags() {
        let c = parse(&[
            "--port",
            "8080",
            "--host=0.0.0.0",
            "--seed",
            "7",
            "--api-key",
            "k",
        ])
        .unwrap()
        .unwrap();
        assert_eq!((c.port, c.host.as_str(), c.seed), (8080, "0.0.0.0", 7));
        assert_eq!(c.api_key.as_deref(), Some("k"));
        assert!(parse(&["--port", "x"]).is_err());
        assert!(parse(&["--port"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert_eq!(parse(&[]).unwrap().unwrap().port, 0);
    }
}
