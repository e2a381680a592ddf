//! Deriving a [`Rule`] for one code address from the module's in-memory `.eh_frame`, the first
//! time the address is seen: the `.eh_frame_hdr` binary search finds the FDE, gimli runs its CFI
//! program up to the address, and the row is translated into a compact rule where it fits
//! (the same translation framehop makes into its own `UnwindRuleX86_64`; framehop's rule cache is
//! private to it, so the rule cannot be taken from there). Anything else (a CFA given by a DWARF
//! expression, a register other than rsp or rbp, an address no FDE covers) becomes
//! [`Rule::SLOW`]: framehop unwinds those frames, exactly as before.
//!
//! The kernel's signal trampoline is recognised by its code, as libgcc's fallback does: the
//! return address of a signal handler points at `mov $15, %rax; syscall` (`rt_sigreturn`), which
//! glibc's `__restore_rt` and musl's `__restore_rt` are. Its rule is [`Rule::SIGNAL`].
//!
//! Slow path only: called with the recorder's guard held; may allocate (gimli's unwind
//! context is made once per thread and reused).

use std::ops::Range;

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};

use super::table::Rule;
use crate::modules::UnwindSections;

pub(crate) type Context = UnwindContext<usize>;

/// `mov $0xf, %rax; syscall` (glibc) and `mov $0xf, %eax; syscall` (musl).
const SIGRETURN_GLIBC: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];
const SIGRETURN_MUSL: [u8; 7] = [0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// True if the code at `addr` is the `rt_sigreturn` trampoline.
fn is_sigreturn(text: &Range<u64>, addr: u64) -> bool {
    let matches = |code: &[u8]| {
        let end = addr.saturating_add(code.len() as u64);
        // SAFETY: inside the module's executable segment, which is mapped and readable.
        text.start <= addr
            && end <= text.end
            && unsafe { std::slice::from_raw_parts(addr as *const u8, code.len()) } == code
    };
    matches(&SIGRETURN_GLIBC) || matches(&SIGRETURN_MUSL)
}

fn slice(r: &Range<u64>) -> &'static [u8] {
    // SAFETY: a range of a mapped module's segments; the module stays mapped until its rules
    // are forgotten (`dlclose`).
    unsafe { std::slice::from_raw_parts(r.start as *const u8, (r.end - r.start) as usize) }
}

/// The rule for `key`: a return address (the rule is the call's, at `key - 1`), or an
/// instruction a signal interrupted plus one (the rule is the instruction's own). The trampoline
/// is found either way: a return address that is `__restore_rt` itself (the handler's), or an
/// interrupted instruction that is (a signal that came as the trampoline began). The two cannot
/// be taken for one another: `__restore_rt + 1` is inside its first instruction, never a return
/// address, and `__restore_rt - 1` is the `nop` glibc puts before it for unwinders, never run.
pub(crate) fn derive(m: &UnwindSections, key: u64, ctx: &mut Context) -> Rule {
    if is_sigreturn(&m.text, key) || is_sigreturn(&m.text, key.wrapping_sub(1)) {
        return Rule::SIGNAL;
    }
    match from_cfi(m, key - 1, ctx) {
        Some(rule) => rule,
        // The loader's entry code (`_start`, then `_dl_start_user`, which calls the libraries'
        // constructors through `_dl_init` before it jumps to the program's entry) has no CFI in
        // glibc 2.36: it is the outermost frame of the process, as the program's `_start` is,
        // not a walk cut short. (A constructor's allocations made every stack of theirs count
        // as truncated: libselinux's, in `ls`, `sed`, `find`, `tar`.)
        None if in_loader_entry(key - 1) => Rule::END,
        None => Rule::SLOW,
    }
}

/// The loader's entry stub: from its ELF entry point, `RTLD_START`'s few instructions (61 bytes
/// on glibc 2.36's x86-64; 64 taken).
fn in_loader_entry(addr: u64) -> bool {
    static ENTRY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let entry = *ENTRY.get_or_init(|| {
        // SAFETY: `getauxval` reads the auxiliary vector; AT_BASE is the loader's load address,
        // where its ELF header is mapped (read-only, for the life of the process).
        let base = unsafe { libc::getauxval(libc::AT_BASE) };
        if base == 0 {
            return 0;
        }
        // SAFETY: as above; `e_entry` is the word at offset 24 of an `Elf64_Ehdr`.
        unsafe {
            let ident = std::ptr::read_unaligned(base as *const [u8; 4]);
            if &ident != b"\x7fELF" {
                return 0;
            }
            base + std::ptr::read_unaligned((base + 24) as *const u64)
        }
    });
    entry != 0 && (entry..entry + 64).contains(&addr)
}

fn from_cfi(m: &UnwindSections, addr: u64, ctx: &mut Context) -> Option<Rule> {
    // Every base is an actual address, so the pointers gimli decodes are actual addresses too.
    let bases = BaseAddresses::default()
        .set_eh_frame_hdr(m.eh_frame_hdr.start)
        .set_eh_frame(m.eh_frame.start)
        .set_text(m.text.start);
    let hdr = EhFrameHdr::new(slice(&m.eh_frame_hdr), LittleEndian)
        .parse(&bases, 8)
        .ok()?;
    let mut eh_frame = EhFrame::new(slice(&m.eh_frame), LittleEndian);
    eh_frame.set_address_size(8);
    let fde = hdr
        .table()?
        .fde_for_address(&eh_frame, &bases, addr, EhFrame::cie_from_offset)
        .ok()?;
    if fde.is_signal_trampoline() {
        return None; // a trampoline whose code we do not know: framehop
    }
    let row = fde
        .unwind_info_for_address(&eh_frame, &bases, ctx, addr)
        .ok()?;
    translate(
        row.cfa(),
        row.register(X86_64::RBP),
        row.register(X86_64::RA),
    )
}

/// framehop's translation of a CFI row (`x86_64/dwarf.rs`), into our encoding.
fn translate(
    cfa: &CfaRule<usize>,
    bp: Option<RegisterRule<usize>>,
    ra: Option<RegisterRule<usize>>,
) -> Option<Rule> {
    match ra {
        // No return address: the outermost frame.
        None | Some(RegisterRule::Undefined) => return Some(Rule::END),
        Some(RegisterRule::Offset(-8)) => {}
        _ => return None,
    }
    let bp_at = match bp {
        None | Some(RegisterRule::Undefined) | Some(RegisterRule::SameValue) => None,
        Some(RegisterRule::Offset(o)) => Some(o),
        _ => return None,
    };
    match *cfa {
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RSP => {
            match bp_at {
                // rbp saved below the stack pointer: an epilogue after `pop %rbp` whose CFI was
                // not updated, so rbp holds the saved value already (framehop keeps rbp there).
                Some(o) if offset + o < 0 => Rule::rsp(offset, None),
                _ => Rule::rsp(offset, bp_at),
            }
        }
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RBP => {
            Rule::rbp(offset, bp_at?)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gimli::Register;

    #[test]
    fn translates_the_usual_rows_and_refuses_the_rest() {
        let rsp = |offset| CfaRule::RegisterAndOffset {
            register: X86_64::RSP,
            offset,
        };
        let rbp = |offset| CfaRule::RegisterAndOffset {
            register: X86_64::RBP,
            offset,
        };
        let ra = || Some(RegisterRule::Offset(-8));
        assert_eq!(translate(&rsp(8), None, ra()), Rule::rsp(8, None));
        assert_eq!(
            translate(&rsp(48), Some(RegisterRule::Offset(-16)), ra()),
            Rule::rsp(48, Some(-16))
        );
        assert_eq!(
            translate(&rbp(16), Some(RegisterRule::Offset(-16)), ra()),
            Rule::rbp(16, -16)
        );
        assert_eq!(translate(&rsp(8), None, None), Some(Rule::END));
        assert_eq!(
            translate(&rsp(8), Some(RegisterRule::Offset(-16)), ra()),
            Rule::rsp(8, None),
            "rbp already popped"
        );
        assert_eq!(
            translate(&rbp(16), None, ra()),
            None,
            "rbp-based, rbp not saved"
        );
        assert_eq!(
            translate(&rsp(8), None, Some(RegisterRule::Offset(-16))),
            None
        );
        let r10 = CfaRule::RegisterAndOffset {
            register: Register(10),
            offset: 0,
        };
        assert_eq!(translate(&r10, None, ra()), None);
    }
}
