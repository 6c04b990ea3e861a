//! Streaming a command's output as newline-delimited JSON: one line per
//! chunk of stdout or stderr as it arrives, then one line with the exit
//! code (or the error that stopped the command). If the client goes away,
//! the command is stopped.

use crate::api::OutputLine;
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use drydock_engine::blueprint::{CommandInterface, CommandSpec};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

fn line(l: &OutputLine) -> Bytes {
    let mut v = serde_json::to_vec(l).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn chunk(stream: &str, data: &[u8]) -> Bytes {
    line(&OutputLine {
        stream: Some(stream.into()),
        data: Some(String::from_utf8_lossy(data).into_owned()),
        exit_code: None,
        error: None,
    })
}

pub fn run(iface: Arc<dyn CommandInterface>, spec: CommandSpec) -> Response {
    let (mut out_w, mut out_r) = tokio::io::duplex(64 * 1024);
    let (mut err_w, mut err_r) = tokio::io::duplex(64 * 1024);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let runner = tokio::spawn(async move { iface.run(&spec, &mut out_w, &mut err_w).await });
    tokio::spawn(async move {
        let (mut b1, mut b2) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            let sent = tokio::select! {
                n = out_r.read(&mut b1), if out_open => match n {
                    Ok(0) | Err(_) => { out_open = false; Ok(()) }
                    Ok(n) => tx.send(chunk("stdout", &b1[..n])).await,
                },
                n = err_r.read(&mut b2), if err_open => match n {
                    Ok(0) | Err(_) => { err_open = false; Ok(()) }
                    Ok(n) => tx.send(chunk("stderr", &b2[..n])).await,
                },
            };
            if sent.is_err() {
                // The client is gone: stop the command.
                runner.abort();
                return;
            }
        }
        let last = match runner.await {
            Ok(Ok(code)) => OutputLine {
                stream: None,
                data: None,
                exit_code: Some(code),
                error: None,
            },
            Ok(Err(e)) => OutputLine {
                stream: None,
                data: None,
                exit_code: None,
                error: Some(e.to_string()),
            },
            Err(e) => OutputLine {
                stream: None,
                data: None,
                exit_code: None,
                error: Some(format!("the command runner stopped: {e}")),
            },
        };
        let _ = tx.send(line(&last)).await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}
