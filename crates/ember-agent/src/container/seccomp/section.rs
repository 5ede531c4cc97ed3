//! One architecture's part of the filter: a binary search on the syscall number
//! (the accumulator holds it throughout), ending in short linear leaves. A number
//! whose only rule has no argument comparisons returns its action in the leaf;
//! one with comparisons jumps to its chain of rule blocks (strongest first), which
//! falls through to the default action. Only the rules of one number can match a
//! call, so this decides as the plain list of blocks would, in O(log n).

use std::collections::BTreeMap;

use super::{assemble, stmt, Block, Insn, JA, JEQ_K, JGE_K, RET_K};

/// Numbers a leaf tests one after the other.
const LEAF: usize = 4;

enum Leaf {
    Ret(u32),
    Chain(usize),
}

struct Emitter<'a> {
    out: &'a mut Vec<Insn>,
    default: u32,
    /// `ja` instructions to patch: (position, chain index).
    to_chain: Vec<(usize, usize)>,
}

impl Emitter<'_> {
    fn tree(&mut self, items: &[(u32, Leaf)]) {
        if items.len() <= LEAF {
            for (nr, leaf) in items {
                self.out.push(Insn {
                    code: JEQ_K,
                    jt: 0,
                    jf: 1,
                    k: *nr,
                });
                match leaf {
                    Leaf::Ret(r) => self.out.push(stmt(RET_K, *r)),
                    Leaf::Chain(i) => {
                        self.to_chain.push((self.out.len(), *i));
                        self.out.push(stmt(JA, 0));
                    }
                }
            }
            self.out.push(stmt(RET_K, self.default));
            return;
        }
        let mid = items.len() / 2;
        // nr >= pivot: the `ja` to the right half; else skip it into the left half.
        self.out.push(Insn {
            code: JGE_K,
            jt: 0,
            jf: 1,
            k: items[mid].0,
        });
        let ja = self.out.len();
        self.out.push(stmt(JA, 0));
        self.tree(&items[..mid]);
        self.out[ja].k = (self.out.len() - ja - 1) as u32;
        self.tree(&items[mid..]);
    }
}

/// Emits the section for `blocks` (in precedence order); the accumulator must
/// hold the syscall number on entry.
pub(super) fn emit(blocks: &[Block], default: u32, out: &mut Vec<Insn>) {
    let mut by_nr: BTreeMap<u32, Vec<&Block>> = BTreeMap::new();
    for b in blocks {
        by_nr.entry(b.nr).or_default().push(b);
    }
    let mut chains: Vec<Vec<&Block>> = Vec::new();
    let items: Vec<(u32, Leaf)> = by_nr
        .into_iter()
        .map(|(nr, bs)| {
            if bs.len() == 1 && bs[0].checks.is_empty() {
                (nr, Leaf::Ret(bs[0].ret))
            } else {
                chains.push(bs);
                (nr, Leaf::Chain(chains.len() - 1))
            }
        })
        .collect();
    let mut e = Emitter {
        out,
        default,
        to_chain: Vec::new(),
    };
    e.tree(&items);
    let mut at = Vec::with_capacity(chains.len());
    for chain in &chains {
        at.push(e.out.len());
        for b in chain {
            assemble(b, e.out);
        }
        e.out.push(stmt(RET_K, default));
    }
    for (pos, i) in std::mem::take(&mut e.to_chain) {
        e.out[pos].k = (at[i] - pos - 1) as u32;
    }
}
