//! Flamegraphs (with `inferno`) and the collapsed stacks behind them.

use std::collections::BTreeMap;
use std::io::Write;

use zmtrace_format::{Dump, LeakKind};

use zmtrace_analyze::analysis::{Analysis, SiteStats};
use zmtrace_analyze::symbols::Symbolizer;
use zmtrace_analyze::Session;

/// What a flamegraph measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Number of allocations.
    Allocations,
    /// Bytes allocated in all.
    Bytes,
    /// Bytes not freed at exit.
    Leaked,
    /// Bytes live at the moment of the peak heap.
    Peak,
    /// Number of temporary allocations.
    Temporary,
    /// Number of reallocs.
    Reallocs,
    /// Bytes definitely and indirectly lost at exit (the leak check's; without one, every byte
    /// not freed at exit).
    Lost,
    /// The program's own mappings: bytes mapped in all (`mmap`, and `mremap` growth).
    Mapped,
    /// The program's own mappings still mapped at exit.
    MappedAtExit,
}

impl Metric {
    pub const ALL: [Metric; 9] = [
        Metric::Allocations,
        Metric::Bytes,
        Metric::Leaked,
        Metric::Peak,
        Metric::Temporary,
        Metric::Reallocs,
        Metric::Lost,
        Metric::Mapped,
        Metric::MappedAtExit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Allocations => "allocations",
            Metric::Bytes => "bytes",
            Metric::Leaked => "leaked",
            Metric::Peak => "peak",
            Metric::Temporary => "temporary",
            Metric::Reallocs => "reallocs",
            Metric::Lost => "lost",
            Metric::Mapped => "mapped",
            Metric::MappedAtExit => "mapped-at-exit",
        }
    }

    pub fn parse(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == s)
    }

    fn value(self, s: &SiteStats) -> u64 {
        match self {
            Metric::Allocations => s.allocations,
            Metric::Bytes => s.bytes,
            Metric::Leaked => s.leaked_bytes,
            Metric::Peak => s.peak_bytes,
            Metric::Temporary => s.temporary,
            // Weighted in a sampled recording, as the other metrics are.
            Metric::Reallocs => s.reallocs(),
            Metric::Lost => {
                s.kinds[LeakKind::Definite as usize].bytes
                    + s.kinds[LeakKind::Indirect as usize].bytes
            }
            // Not heap sites: see `folded`.
            Metric::Mapped | Metric::MappedAtExit => 0,
        }
    }

    /// What the numbers count, for the title and the tooltips.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Allocations => "allocations",
            Metric::Bytes
            | Metric::Leaked
            | Metric::Peak
            | Metric::Lost
            | Metric::Mapped
            | Metric::MappedAtExit => "bytes",
            Metric::Temporary => "temporary allocations",
            Metric::Reallocs => "reallocs",
        }
    }

    /// Why a flamegraph of this metric can be empty, said plainly.
    fn none(self) -> &'static str {
        match self {
            Metric::Allocations | Metric::Bytes => "no allocations were recorded",
            Metric::Leaked => "every block was freed before exit (or suppressed)",
            Metric::Peak => "nothing was live at the peak heap",
            Metric::Temporary => "no allocation was temporary",
            Metric::Reallocs => "no block was reallocated",
            Metric::Lost => {
                "no block was definitely or indirectly lost at exit (beyond the suppressions)"
            }
            Metric::Mapped => "the program mapped nothing with mmap or mremap",
            Metric::MappedAtExit => "the program unmapped everything it mapped before exit",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Metric::Allocations => "Allocations (count)",
            Metric::Bytes => "Bytes allocated in all",
            Metric::Leaked => "Bytes not freed at exit",
            Metric::Peak => "Bytes live at the peak heap",
            Metric::Temporary => "Temporary allocations (count)",
            Metric::Reallocs => "Reallocs (count)",
            Metric::Lost => "Bytes definitely and indirectly lost at exit",
            Metric::Mapped => "Bytes mapped in all (the program's mmap and mremap)",
            Metric::MappedAtExit => "Bytes still mapped at exit (the program's mmap and mremap)",
        }
    }
}

/// The collapsed stacks (`main;f;g 123`, outermost first), one line per distinct stack, sorted.
/// Inlined frames are kept; a semicolon inside a name would split a frame, so it is replaced.
/// `lost` without a leak check in the dump counts every byte not freed at exit (`leaked`).
pub fn folded(a: &Analysis, sym: &mut Symbolizer, metric: Metric) -> Vec<String> {
    let metric = if metric == Metric::Lost && a.check.is_none() {
        Metric::Leaked
    } else {
        metric
    };
    // The mapping metrics are the mappings' own sites, never the heap's.
    let values: Vec<(u32, u64)> = match metric {
        Metric::Mapped => a
            .mapped
            .sites
            .iter()
            .map(|(&id, s)| (id, s.bytes))
            .collect(),
        Metric::MappedAtExit => a
            .mapped
            .sites
            .iter()
            .map(|(&id, s)| (id, s.at_exit))
            .collect(),
        _ => a
            .sites
            .iter()
            .map(|(&id, s)| (id, metric.value(s)))
            .collect(),
    };
    collapse(sym, values.into_iter())
}

/// The collapsed stacks of any per-stack values (stack id, value): what [`folded`] writes for a
/// metric, and `export --format folded` for a sample type. Zero values are left out.
pub fn collapse(sym: &mut Symbolizer, values: impl Iterator<Item = (u32, u64)>) -> Vec<String> {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for (id, v) in values {
        if v == 0 {
            continue;
        }
        let frames = sym.stack(id);
        let path: Vec<String> = frames
            .iter()
            .rev()
            .map(|f| f.label().replace(';', ":"))
            .collect();
        let key = if path.is_empty() {
            "<empty stack>".to_string()
        } else {
            path.join(";")
        };
        *lines.entry(key).or_default() += v;
    }
    lines.into_iter().map(|(k, v)| format!("{k} {v}")).collect()
}

/// What `zmtrace flamegraph` says on stderr (its output is a picture or collapsed stacks): the
/// reader's and the symbolizer's warnings, and that `lost` without a leak check counts every
/// block. After [`folded`], which symbolizes the stacks (and so makes the symbolizer's).
pub fn warnings(s: &Session, metric: Metric) -> Vec<String> {
    let mut out = Vec::new();
    if metric == Metric::Lost && s.analysis.check.is_none() {
        out.push(format!("{} (counted as lost)", crate::leaks::NO_CHECK));
    }
    out.extend(s.sym.warnings.iter().cloned());
    out.extend(s.dump.warnings.iter().cloned());
    out.extend(s.dump.late_warnings());
    out
}

/// The collapsed stacks as `--folded` prints them: one a line.
pub fn folded_text(lines: &[String]) -> String {
    let mut s = lines.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// The title of a differential flamegraph: the metric, and the two runs by command and pid.
pub fn differential_title(base: &Dump, new: &Dump, metric: Metric) -> String {
    let name = |d: &Dump| {
        d.process
            .as_ref()
            .map(|p| format!("{} (pid {})", p.command().join(" "), p.pid))
            .unwrap_or_else(|| d.path.display().to_string())
    };
    format!("{} — {} → {}", metric.name(), name(base), name(new))
}

/// Writes an SVG flamegraph of `metric`. With nothing to draw (no stack has any of `metric`: a
/// program that leaks nothing, with `leaked`), a valid SVG that says so: inferno refuses empty
/// input ("No stack counts found") and would leave a page that says only "ERROR".
pub fn flamegraph(
    dump: &Dump,
    folded: &[String],
    metric: Metric,
    out: impl Write,
) -> std::io::Result<()> {
    let program = dump
        .process
        .as_ref()
        .and_then(|p| p.argv.first())
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_else(|| "?".into());
    let pid = dump.process.as_ref().map_or(0, |p| p.pid);
    let sampled = match dump.sample_interval() {
        Some(t) => format!(
            " — estimated (sampled every {})",
            crate::words::human_bytes(t)
        ),
        None => String::new(),
    };
    let title = format!("{} — {program} (pid {pid}){sampled}", metric.title());
    if folded.is_empty() {
        return empty_svg(&title, &format!("Nothing to draw: {}.", metric.none()), out);
    }
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title;
    opts.count_name = metric.unit().to_string();
    opts.name_type = "Function:".to_string();
    draw(&mut opts, folded.iter().map(String::as_str), out)
}

/// inferno's SVG, with box labels shortened the way a reader would (see [`short_label`]): in
/// the text drawn at first, and by a script that replaces inferno's own (which, keeping the end
/// of a name, left a C++ box showing only its parameter list) whenever the boxes are laid out
/// again (zoom, resize). The tooltips keep the whole name.
fn draw<'a>(
    opts: &mut inferno::flamegraph::Options,
    lines: impl IntoIterator<Item = &'a str>,
    mut out: impl Write,
) -> std::io::Result<()> {
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(opts, lines, &mut svg)?;
    let svg = String::from_utf8(svg).map_err(std::io::Error::other)?;
    let svg = shorten_labels(&svg);
    let svg = match svg.rfind("</svg>") {
        Some(end) => format!("{}{SHORT_LABELS_JS}{}", &svg[..end], &svg[end..]),
        None => svg,
    };
    out.write_all(svg.as_bytes())
}

/// Redefines inferno's two functions that fit a box's label to its width (a later script's
/// functions replace the earlier ones of the same name), with the shortening of
/// [`short_label`], step for step.
const SHORT_LABELS_JS: &str = r#"<script type="text/ecmascript"><![CDATA[
// zmtrace: labels shortened as a reader would: the parameters go first, then the template
// arguments, then a template instance's return type, then the end of the name (never its
// start). As short_label in src/report/src/flame.rs.
function zm_drop_params(s) {
    var m = /\)( const| volatile| &| &&| noexcept)*$/.exec(s);
    if (!m) return s;
    var depth = 0;
    for (var i = m.index; i >= 0; i--) {
        if (s[i] === ")") depth++;
        else if (s[i] === "(" && --depth === 0) return i > 0 ? s.substring(0, i) : s;
    }
    return s;
}
function zm_collapse_templates(s) {
    var out = "", depth = 0;
    for (var i = 0; i < s.length; i++) {
        var c = s[i];
        if (depth === 0 && c === "<" && /operator(<|<<|<=)?$/.test(s.substring(0, i))) { out += c; continue; }
        if (c === "<") { if (depth++ === 0) out += "<…>"; continue; }
        if (c === ">" && depth > 0) { depth--; continue; }
        if (depth === 0) out += c;
    }
    return depth === 0 ? out : s;
}
function zm_fit(s, n) {
    if (s.length <= n) return s;
    var t = zm_drop_params(s);
    if (t.length <= n) return t;
    t = zm_collapse_templates(t);
    if (t.length <= n) return t;
    var sp = t.lastIndexOf(" "), ret = t.substring(0, sp), name = t.substring(sp + 1);
    if (sp >= 0 && /<\u2026>|[*&]$/.test(ret) && name && name.indexOf(")") < 0 && t.indexOf("operator") < 0) t = name;
    if (t.length <= n) return t;
    return n >= 3 ? t.substring(0, n - 2) + ".." : "";
}
function update_text_for_elements(elements) {
    var cw = known_font_width || fontsize * fontwidth, done = [];
    for (var i = 0; i < elements.length; i++) {
        var e = elements[i], r = find_child(e, "rect");
        var w = parseFloat(r.attributes.width.value) * frames.attributes.width.value / 100 - 3;
        var name = find_child(e, "title").textContent.replace(/ \([^(]*\)$/, "");
        var x = format_percent(parseFloat(r.attributes.x.value) + 100 * 3 / frames.attributes.width.value);
        done.push([x, w < 2 * cw ? "" : zm_fit(name, Math.floor(w / cw))]);
    }
    for (var i = 0; i < elements.length; i++) {
        var t = find_child(elements[i], "text");
        t.attributes.x.value = done[i][0];
        t.textContent = done[i][1];
    }
}
function update_text(e) { update_text_for_elements([e]); }
]]></script>
"#;

/// The labels inferno drew cut (ending in `..`), drawn again from their box's title with
/// [`short_label`] in as many characters.
fn shorten_labels(svg: &str) -> String {
    let mut out = String::with_capacity(svg.len());
    let mut rest = svg;
    while let Some(at) = rest.find("<g><title>") {
        let (head, tail) = rest.split_at(at + "<g><title>".len());
        out.push_str(head);
        rest = tail;
        let Some(title_end) = rest.find("</title>") else {
            break;
        };
        let title = &rest[..title_end];
        let Some(text_at) = rest.find("<text ") else {
            break;
        };
        let Some(open_end) = rest[text_at..].find('>').map(|i| text_at + i + 1) else {
            break;
        };
        let Some(close) = rest[open_end..].find("</text>").map(|i| open_end + i) else {
            break;
        };
        let shown = unescape(&rest[open_end..close]);
        if !shown.ends_with("..") || rest[title_end..text_at].contains("<g>") {
            continue;
        }
        // The title is "NAME (COUNT UNIT, PCT%)".
        let name = unescape(title.rsplit_once(" (").map_or(title, |(n, _)| n));
        // inferno draws a name whole only when it is shorter than the room, hence the - 1.
        let room = shown.chars().count().saturating_sub(1);
        out.push_str(&rest[..open_end]);
        out.push_str(&escape(&short_label(&name, room)));
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A function's name in at most `room` characters, shortened as a reader would: whole if it
/// fits; else without its parameters (`f(int) const` -> `f`); else with its template arguments
/// folded too (`std::vector<int>::push_back` -> `std::vector<…>::push_back`); else without the
/// return type a template's instance is demangled with; else cut at the end, never the start.
pub fn short_label(name: &str, room: usize) -> String {
    let len = |s: &str| s.chars().count();
    if len(name) <= room {
        return name.to_string();
    }
    let bare = drop_params(name);
    if len(bare) <= room {
        return bare.to_string();
    }
    let folded = collapse_templates(bare);
    if len(&folded) <= room {
        return folded;
    }
    // A function template's instance is demangled with its return type first
    // (`std::_Rb_tree_node<…>* std::_Rb_tree<…>::_M_create_node<…>`): the name is what is
    // after it. (An operator's name has spaces of its own: `operator< <…>`.)
    let is_type = |t: &str| t.contains("<…>") || t.ends_with('*') || t.ends_with('&');
    let folded = match folded.rsplit_once(' ') {
        Some((ret, name))
            if is_type(ret)
                && !name.is_empty()
                && !name.contains(')')
                && !folded.contains("operator") =>
        {
            name.to_string()
        }
        _ => folded,
    };
    if len(&folded) <= room {
        return folded;
    }
    if room < 3 {
        return String::new();
    }
    let mut cut: String = folded.chars().take(room - 2).collect();
    cut.push_str("..");
    cut
}

/// `ns::f(int, char const*) const` -> `ns::f`; a name that is all parentheses (`(below main)`)
/// or has none stays as it is.
fn drop_params(name: &str) -> &str {
    let mut end = name.trim_end();
    loop {
        let before = end;
        for q in [" const", " volatile", " &&", " &", " noexcept"] {
            end = end.strip_suffix(q).unwrap_or(end);
        }
        if end == before {
            break;
        }
    }
    if !end.ends_with(')') {
        return name;
    }
    let mut depth = 0usize;
    for (i, c) in end.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' => {
                depth -= 1;
                if depth == 0 {
                    return if i > 0 { &name[..i] } else { name };
                }
            }
            _ => {}
        }
    }
    name
}

/// Each outermost `<…>` of template arguments as `<…>` (not the `<` of `operator<`,
/// `operator<<` or `operator<=`).
fn collapse_templates(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut depth = 0usize;
    for (i, c) in name.char_indices() {
        let before = &name[..i];
        if depth == 0
            && c == '<'
            && ["operator", "operator<", "operator<<", "operator<="]
                .iter()
                .any(|op| before.ends_with(op))
        {
            out.push(c);
            continue;
        }
        match c {
            '<' => {
                if depth == 0 {
                    out.push_str("<…>");
                }
                depth += 1;
            }
            '>' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    if depth == 0 {
        out
    } else {
        name.to_string()
    }
}

/// A flamegraph with no frames: the title and one line saying why there is nothing.
fn empty_svg(title: &str, why: &str, mut out: impl Write) -> std::io::Result<()> {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    write!(
        out,
        r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="120" viewBox="0 0 1200 120" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="100%" height="100%" fill="#f8f8f8"/>
<text x="600" y="32" text-anchor="middle" font-family="Verdana" font-size="17">{}</text>
<text x="600" y="72" text-anchor="middle" font-family="Verdana" font-size="14" fill="#555">{}</text>
</svg>
"##,
        esc(title),
        esc(why)
    )
}

/// Writes a differential flamegraph of `metric` from `base` to `new` (collapsed stacks of each):
/// frames are as wide as in `new`, red where they grew, blue where they shrank (inferno's
/// differential mode).
pub fn differential(
    base: &[String],
    new: &[String],
    metric: Metric,
    title: String,
    out: impl Write,
) -> std::io::Result<()> {
    let join = |v: &[String]| {
        let mut s = v.join("\n");
        s.push('\n');
        s
    };
    let mut lines = Vec::new();
    inferno::differential::from_readers(
        inferno::differential::Options::default(),
        join(base).as_bytes(),
        join(new).as_bytes(),
        &mut lines,
    )?;
    let lines = String::from_utf8_lossy(&lines).into_owned();
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title;
    opts.count_name = metric.unit().to_string();
    opts.name_type = "Function:".to_string();
    if lines.trim().is_empty() {
        let why = format!("Nothing to draw: {}, in either dump.", metric.none());
        return empty_svg(&opts.title, &why, out);
    }
    draw(&mut opts, lines.lines(), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPLACE: &str =
        "std::_Rb_tree<int, std::pair<int const, std::__cxx11::basic_string<char, \
        std::char_traits<char>, std::allocator<char> > >, std::less<int> >::\
        _M_emplace_hint_unique<std::piecewise_construct_t const&, std::tuple<int&&>, \
        std::tuple<> >(std::_Rb_tree_const_iterator<std::pair<int const, int> >, \
        std::piecewise_construct_t const&, std::tuple<int&&>, std::tuple<>)";

    #[test]
    fn a_long_name_loses_its_parameters_then_its_template_arguments_then_its_end() {
        assert_eq!(short_label("zs::zs_maps(int)", 40), "zs::zs_maps(int)");
        assert_eq!(short_label("zs::zs_maps(int)", 12), "zs::zs_maps");
        assert_eq!(
            short_label(
                "std::vector<int, std::allocator<int> >::push_back(int const&)",
                50
            ),
            "std::vector<int, std::allocator<int> >::push_back"
        );
        assert_eq!(
            short_label(
                "std::vector<int, std::allocator<int> >::push_back(int const&)",
                30
            ),
            "std::vector<…>::push_back"
        );
        assert_eq!(
            short_label(EMPLACE, 60),
            "std::_Rb_tree<…>::_M_emplace_hint_unique<…>"
        );
        assert_eq!(short_label(EMPLACE, 20), "std::_Rb_tree<…>::..");
        let create = "std::_Rb_tree_node<int>* std::_Rb_tree<int>::_M_create_node<int>(int&&)";
        assert_eq!(
            short_label(create, 40),
            "std::_Rb_tree<…>::_M_create_node<…>"
        );
        assert_eq!(short_label("f() const", 2), "f");
        assert_eq!(short_label("(below main)", 8), "(below..");
        assert_eq!(
            short_label("operator<<(std::ostream&, int)", 12),
            "operator<<"
        );
        assert_eq!(
            short_label(
                "bool std::operator< <int>(std::vector<int> const&, int)",
                23
            ),
            "bool std::operator< <…>"
        );
        assert_eq!(
            short_label("std::function<void (int)>::operator()(int) const", 40),
            "std::function<void (int)>::operator()"
        );
    }
}
