//! The `zmtrace` command. Each subcommand parses its options, calls one function, and `main`
//! turns the outcome into an exit code.
//!
//! Exit codes: the traced program's own status for `run` (128+N if a signal N killed it);
//! 0 for a successful analysis; 2 for bad input (a file that is not a dump, bad options);
//! 125 when zmtrace cannot set up (unwritable output, missing library); 126 when the program
//! cannot be traced (statically linked, not executable); 127 when it does not exist.

mod info;
mod run;
mod summary;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "zmtrace",
    version,
    about = "Trace every allocation of a native program; analyze the dump offline."
)]
struct Opt {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run PROGRAM with every allocation recorded; leaves one dump per process.
    Run {
        /// Directory for the dumps (created if missing).
        #[arg(short = 'o', long = "out", default_value = ".")]
        out: PathBuf,
        /// The program to run and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// Print a dump's header, event counts and modules; say whether it is complete.
    DumpInfo {
        dump: PathBuf,
        /// Also list every module.
        #[arg(long)]
        modules: bool,
    },
}

/// Why zmtrace itself failed: a one-line message and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: i32,
}

impl Failure {
    pub fn usage(message: String) -> Failure {
        Failure { message, code: 125 }
    }
    pub fn bad_input(message: String) -> Failure {
        Failure { message, code: 2 }
    }
    pub fn cannot_run(message: String) -> Failure {
        Failure { message, code: 126 }
    }
    pub fn not_found(message: String) -> Failure {
        Failure { message, code: 127 }
    }
}

fn main() {
    let opt = Opt::parse();
    let result = match opt.cmd {
        Cmd::Run { out, command } => {
            let mut it = command.into_iter();
            let program = it.next().unwrap_or_default();
            run::run(&run::RunOptions {
                out_dir: out,
                program,
                args: it.collect(),
            })
        }
        Cmd::DumpInfo { dump, modules } => info::dump_info(&dump, modules).map(|()| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(f) => {
            eprintln!("zmtrace: error: {}", f.message);
            std::process::exit(f.code);
        }
    }
}
