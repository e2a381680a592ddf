//! `zmtrace view`: one self-contained HTML page (styles, script and data inlined: it opens from
//! disk, offline) built from the sources in `viewer/`, which are compiled into the binary. With
//! `--serve`, the page is also served on 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use zmtrace_analyze::reports::Options;
use zmtrace_analyze::suppressions::{self, Suppressions};
use zmtrace_analyze::view::{self, Base, Limits};
use zmtrace_analyze::{analyze, Symbolizer};
use zmtrace_format::Dump;

use crate::Failure;

const TEMPLATE: &str = include_str!("../../../viewer/index.html");
const CSS: &str = include_str!("../../../viewer/viewer.css");
/// Concatenated in this order into one script.
const SCRIPTS: [&str; 5] = [
    include_str!("../../../viewer/js/format.js"),
    include_str!("../../../viewer/js/chart.js"),
    include_str!("../../../viewer/js/flame.js"),
    include_str!("../../../viewer/js/tables.js"),
    include_str!("../../../viewer/js/main.js"),
];

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
    Dump::open(path).map_err(|e| Failure::bad_input(e.to_string()))
}

fn cannot_write(path: &Path, e: std::io::Error) -> Failure {
    Failure::usage(format!("cannot write {}: {e}", path.display()))
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
            TcpListener::bind("127.0.0.1:0")
                .map_err(|e| Failure::usage(format!("cannot listen on 127.0.0.1: {e}")))?,
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

    let mut a = analyze(&dump, true, &mut |_, _| {});
    let mut sym = Symbolizer::new(&dump);
    suppressions::apply(&mut a, &mut sym, &o.suppressions);
    let mut base_sym = base.as_ref().map(Symbolizer::new);
    let base_analysis = base.as_ref().zip(base_sym.as_mut()).map(|(b, sym)| {
        let mut a = analyze(b, true, &mut |_, _| {});
        suppressions::apply(&mut a, sym, &o.suppressions);
        a
    });
    let base_run = match (&base, &base_analysis, &mut base_sym) {
        (Some(dump), Some(analysis), Some(sym)) => Some(Base {
            dump,
            analysis,
            sym,
        }),
        _ => None,
    };
    let data = view::build(&dump, &a, &mut sym, &o.report, Limits::default(), base_run);
    for w in &data.report.header.warnings {
        eprintln!("zmtrace: warning: {w}");
    }
    let page = page(&data);

    if let (Some(path), Some(mut file)) = (out.as_deref(), file) {
        file.write_all(page.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|e| cannot_write(path, e))?;
        println!("{} ({} KiB)", path.display(), page.len().div_ceil(1024));
    }
    if let Some(listener) = listener {
        serve(listener, &page)?;
    }
    Ok(())
}

/// The page: the template with the styles, the data and the scripts put in.
fn page(data: &view::ViewData) -> String {
    // In a <script> element only `</script` (any case) or `<!--` could end or upset the JSON;
    // escaping every `<` rules both out and still parses as the same JSON.
    let json = serde_json::to_string(data)
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        .replace('<', "\\u003c");
    let mut script = String::from("(() => {\n\"use strict\";\n");
    for s in SCRIPTS {
        script.push_str(s);
        script.push('\n');
    }
    script.push_str("})();\n");
    fill(
        TEMPLATE,
        &[
            ("/*{{css}}*/", CSS),
            ("{{data}}", &json),
            ("/*{{script}}*/", &script),
        ],
    )
}

/// Replaces each marker once, in one pass over the template, so that nothing put in is searched
/// for the next marker.
fn fill(template: &str, parts: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + parts.iter().map(|p| p.1.len()).sum::<usize>());
    let mut rest = template;
    for (marker, value) in parts {
        match rest.find(marker) {
            Some(i) => {
                out.push_str(&rest[..i]);
                out.push_str(value);
                rest = &rest[i + marker.len()..];
            }
            None => panic!("viewer/index.html lacks the marker {marker}"),
        }
    }
    out.push_str(rest);
    out
}

/// Serves the page at `/` until zmtrace is stopped (Ctrl-C). One request at a time: it is one
/// person's browser.
fn serve(listener: TcpListener, page: &str) -> Result<(), Failure> {
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::usage(format!("cannot listen on 127.0.0.1: {e}")))?;
    println!("serving on http://{addr}/ (Ctrl-C to stop)");
    let _ = std::io::stdout().flush();
    // A client that goes away mid-request is its own business.
    for conn in listener.incoming().flatten() {
        let _ = answer(conn, page);
    }
    Ok(())
}

fn answer(mut conn: TcpStream, page: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The headers are not needed, but are read so that the client sees its request taken.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, body) = match (method, target) {
        ("GET" | "HEAD", "/" | "/index.html") => ("200 OK", page),
        ("GET" | "HEAD", _) => ("404 Not Found", "not found\n"),
        _ => ("405 Method Not Allowed", "only GET\n"),
    };
    let kind = if status.starts_with("200") {
        "text/html; charset=utf-8"
    } else {
        "text/plain"
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        conn.write_all(body.as_bytes())?;
    }
    conn.flush()
}
