//! `gantry logs JOB`: what a job's tasks wrote to stdout and stderr, as their agents copied it
//! to the server (the node keeps its own copy under the agent's state directory).

use std::collections::BTreeMap;
use std::io::Write;

use gantry_api::gantry::v1 as pb;
use serde::Serialize;

use crate::remote::{connect_target, state_name, status, Target};

/// `gantry logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The job's name.
    job: String,
    /// Only this task (its index in its group). Default: every task, each line prefixed with
    /// `[index]` (`[group.index]` when the job has several groups).
    #[arg(long)]
    task: Option<u32>,
    /// Only this task group.
    #[arg(long)]
    group: Option<u32>,
    /// An earlier run of the job (0 is the first; `gantry jobs -o json` shows the current
    /// `attempt`). Default: the current run.
    #[arg(long)]
    attempt: Option<u32>,
    /// Keep printing new output until the run ends.
    #[arg(long, short)]
    follow: bool,
    /// Only the last this many bytes of each task's output.
    #[arg(long, value_name = "BYTES")]
    tail_bytes: Option<u64>,
    #[command(flatten)]
    target: Target,
    /// `text`: the output as written; `json`: one object per line of output.
    #[arg(long, short, value_enum, default_value_t = LogFormat::Text)]
    output: LogFormat,
}

/// How `gantry logs` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// As written.
    Text,
    /// JSON lines: `{"group", "index", "attempt", "line"}`.
    Json,
}

#[derive(Serialize)]
struct LineOut<'a> {
    group: u32,
    index: u32,
    attempt: u32,
    line: &'a str,
}

/// Prints chunks: raw for one task, else whole lines with the task's prefix.
struct Printer {
    prefix: bool,
    groups: bool,
    format: LogFormat,
    partial: BTreeMap<(u32, u32), Vec<u8>>,
    attempt: u32,
}

impl Printer {
    fn line(&self, out: &mut impl Write, (g, i): (u32, u32), line: &[u8]) -> std::io::Result<()> {
        match self.format {
            LogFormat::Json => {
                let text = String::from_utf8_lossy(line);
                let doc = LineOut {
                    group: g,
                    index: i,
                    attempt: self.attempt,
                    line: text.trim_end_matches('\n'),
                };
                let json = serde_json::to_string(&doc).map_err(std::io::Error::other)?;
                writeln!(out, "{json}")
            }
            LogFormat::Text => {
                if self.groups {
                    write!(out, "[{g}.{i}] ")?;
                } else {
                    write!(out, "[{i}] ")?;
                }
                out.write_all(line)?;
                if !line.ends_with(b"\n") {
                    out.write_all(b"\n")?;
                }
                Ok(())
            }
        }
    }

    fn chunk(&mut self, out: &mut impl Write, c: &pb::TaskLogChunk) -> std::io::Result<()> {
        if !self.prefix && self.format == LogFormat::Text {
            return out.write_all(&c.data);
        }
        let key = (c.group, c.index);
        let mut buf = self.partial.remove(&key).unwrap_or_default();
        buf.extend_from_slice(&c.data);
        let mut start = 0;
        while let Some(n) = buf[start..].iter().position(|b| *b == b'\n') {
            self.line(out, key, &buf[start..start + n + 1])?;
            start += n + 1;
        }
        if start < buf.len() {
            self.partial.insert(key, buf[start..].to_vec());
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        for (key, rest) in std::mem::take(&mut self.partial) {
            self.line(out, key, &rest)?;
        }
        out.flush()
    }
}

/// `gantry logs JOB`.
pub fn run(args: LogsArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (ch, bearer) = connect_target(&args.target).await?;
        let mut c = pb::jobs_client::JobsClient::with_interceptor(ch, bearer);
        let job = c
            .get_job(pb::GetJobRequest {
                name: args.job.clone(),
            })
            .await
            .map_err(status)?
            .into_inner();
        let attempt = args.attempt.unwrap_or(job.attempt);
        let groups = serde_json::from_str::<gantry_model::JobSpec>(&job.spec_json)
            .map_or(1, |s| s.tasks.len());
        let mut printer = Printer {
            prefix: args.task.is_none() && job.tasks_wanted > 1,
            groups: groups > 1,
            format: args.output,
            partial: BTreeMap::new(),
            attempt,
        };
        let state = state_name(job.state);
        if state == "pending" && attempt == job.attempt {
            let earlier = if job.attempt > 0 {
                format!(
                    "; the last run's output: gantry logs {} --attempt {}",
                    job.name,
                    job.attempt - 1
                )
            } else {
                String::new()
            };
            eprintln!(
                "job {} is pending: run {attempt} has not started{}{earlier}",
                job.name,
                if args.follow { " (waiting for it)" } else { "" }
            );
        }
        let mut stream = c
            .task_logs(pb::TaskLogsRequest {
                name: args.job.clone(),
                task: args.task,
                group: args.group,
                attempt: Some(attempt),
                follow: args.follow,
                tail_bytes: args.tail_bytes.unwrap_or(0),
            })
            .await
            .map_err(status)?
            .into_inner();
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let mut any = false;
        let result: std::io::Result<()> =
            async {
                while let Some(chunk) = stream.message().await.map_err(|e| {
                    std::io::Error::other(format!("{} ({:?})", e.message(), e.code()))
                })? {
                    if chunk.skipped > 0 && args.tail_bytes.is_none() {
                        out.flush()?;
                        eprintln!(
                            "[gantry: the first {} bytes of task {}.{} are no longer kept]",
                            chunk.skipped, chunk.group, chunk.index
                        );
                    }
                    any |= !chunk.data.is_empty();
                    printer.chunk(&mut out, &chunk)?;
                    if args.follow {
                        out.flush()?;
                    }
                }
                printer.finish(&mut out)
            }
            .await;
        match result {
            // `gantry logs job | head`: the reader has what it wanted.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => anyhow::bail!("{e}"),
            Ok(()) => {}
        }
        if !any && state != "pending" {
            eprintln!("job {} run {attempt}: no output", job.name);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(index: u32, data: &str) -> pb::TaskLogChunk {
        pb::TaskLogChunk {
            group: 0,
            index,
            attempt: 0,
            data: data.as_bytes().to_vec(),
            skipped: 0,
        }
    }

    #[test]
    fn lines_of_several_tasks_are_prefixed_whole() {
        let mut p = Printer {
            prefix: true,
            groups: false,
            format: LogFormat::Text,
            partial: BTreeMap::new(),
            attempt: 0,
        };
        let mut out = Vec::new();
        p.chunk(&mut out, &chunk(0, "hel")).unwrap();
        p.chunk(&mut out, &chunk(1, "one\ntw")).unwrap();
        p.chunk(&mut out, &chunk(0, "lo\n")).unwrap();
        p.finish(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[1] one\n[0] hello\n[1] tw\n"
        );
    }

    #[test]
    fn json_lines_name_their_task() {
        let mut p = Printer {
            prefix: false,
            groups: false,
            format: LogFormat::Json,
            partial: BTreeMap::new(),
            attempt: 2,
        };
        let mut out = Vec::new();
        p.chunk(&mut out, &chunk(3, "a \"quote\"\n")).unwrap();
        p.finish(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"group\":0,\"index\":3,\"attempt\":2,\"line\":\"a \\\"quote\\\"\"}\n"
        );
    }
}
