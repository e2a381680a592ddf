//! `zmtrace view`: one self-contained HTML page (styles, script and data inlined: it opens from
//! disk, offline; the report crate's [`view::page`]). With `--serve`, the page is also served on
//! 127.0.0.1.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zmtrace_analyze::session::{self, Session};
use zmtrace_analyze::suppressions::Suppressions;
use zmtrace_format::Dump;
use zmtrace_report::reports::Options;
use zmtrace_report::view::{self, Base, Limits};

use crate::serve::{Response, Server};
use crate::Failure;

pub struct ViewOptions {
    pub dump: PathBuf,
    pub base: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub serve: bool,
    pub report: Options,
    /// Accepted leaks, left out of the leak table and of the leaked and lost numbers, as
    /// `zmtrace leaks` leaves them out.
    pub suppressions: Suppressions,
}

fn open(path: &Path) -> Result<Dump, Failure> {
    session::open(path).map_err(Failure::bad_input)
}

fn cannot_write(path: &Path, e: std::io::Error) -> Failure {
    Failure::setup(format!("cannot write {}: {e}", path.display()))
}

pub fn run(o: &ViewOptions) -> Result<(), Failure> {
    let dump = open(&o.dump)?;
    let base = o.base.as_deref().map(open).transpose()?;
    // Without -o or --serve the page goes next to where we are, named after the dump.
    let out = o.out.clone().or_else(|| {
        (!o.serve).then(|| {
            let stem = o.dump.file_stem().unwrap_or_default().to_string_lossy();
            PathBuf::from(format!("{stem}.html"))
        })
    });
    let listener = if o.serve {
        Some(
            Server::bind_loopback(0)
                .map_err(|e| Failure::setup(format!("cannot listen on 127.0.0.1: {e}")))?,
        )
    } else {
        None
    };
    // Created before the analysis, so that an unwritable path fails at once
    // (and after the port, so that a failure there leaves no empty file).
    let file = out
        .as_deref()
        .map(|p| std::fs::File::create(p).map_err(|e| cannot_write(p, e)))
        .transpose()?;

    let limits = Limits::default();
    let opts = session::Options {
        peak_sites: true,
        timeline: None,
        suppressions: o.suppressions.clone(),
    };
    // Only the dump shown has a timeline; the base is compared by its totals.
    let shown = session::Options {
        timeline: Some(limits.buckets),
        ..opts.clone()
    };
    let mut s = Session::new(&dump, &shown);
    let mut base = base.as_ref().map(|b| Session::new(b, &opts));
    let base_run = base.as_mut().map(|b| Base {
        dump: b.dump,
        analysis: &b.analysis,
        sym: &mut b.sym,
    });
    let data = view::build(&dump, &s.analysis, &mut s.sym, &o.report, limits, base_run);
    for w in &data.report.header.warnings {
        eprintln!("zmtrace: warning: {w}");
    }
    let page = view::page(&data);

    if let (Some(path), Some(mut file)) = (out.as_deref(), file) {
        file.write_all(page.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|e| cannot_write(path, e))?;
        println!("{} ({} KiB)", path.display(), page.len().div_ceil(1024));
    }
    if let Some(server) = listener {
        serve(server, page)?;
    }
    Ok(())
}

/// Serves the page at `/` until zmtrace is stopped (Ctrl-C), to several clients at once, each
/// with a bounded request (see `serve`).
fn serve(server: Server, page: String) -> Result<(), Failure> {
    let shutdown = server.shutdown();
    // Ctrl-C ends the serving (the requests in flight are answered first) and zmtrace exits 0.
    let _ = ctrlc::set_handler(move || shutdown.stop());
    println!("serving on http://{}/ (Ctrl-C to stop)", server.addr());
    let _ = std::io::stdout().flush();
    let page: Arc<[u8]> = page.into_bytes().into();
    server
        .serve(move |r| match r.path.as_str() {
            "/" | "/index.html" => Response::new(200, "text/html; charset=utf-8", page.clone()),
            _ => Response::text(404, "not found\n"),
        })
        .map_err(|e| Failure::setup(format!("cannot serve: {e}")))
}
