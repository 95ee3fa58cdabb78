//! Reusable lists of slices. The executor and the optimizer take lists of
//! buffers (`&[&[f32]]`, `&mut [&mut [f32]]`); building a fresh `Vec` for
//! them every step would allocate. These lists keep their capacity between
//! steps: they are filled, handed to a closure, and emptied again before
//! the call returns, so no reference outlives the buffers it points to.

/// A reusable list of shared slices.
#[derive(Default)]
pub struct ReadList {
    slots: Vec<&'static [f32]>,
}

impl ReadList {
    /// Calls `f` with the slices of `bufs`, allocating nothing once the
    /// list has grown to the largest length used.
    pub fn with<'a, R>(
        &mut self,
        bufs: impl Iterator<Item = &'a [f32]>,
        f: impl for<'b> FnOnce(&'b [&'b [f32]]) -> R,
    ) -> R {
        self.slots.clear();
        for b in bufs {
            // SAFETY: the 'static lifetime never escapes: `f` only sees the
            // slices at a lifetime bounded by this call, and the list is
            // emptied before returning, while every `b` is still borrowed.
            self.slots
                .push(unsafe { std::mem::transmute::<&'a [f32], &'static [f32]>(b) });
        }
        let r = f(&self.slots);
        self.slots.clear();
        r
    }
}

/// A reusable list of mutable slices.
#[derive(Default)]
pub struct WriteList {
    slots: Vec<&'static mut [f32]>,
}

impl WriteList {
    /// Calls `f` with the mutable slices of `bufs` (see [`ReadList::with`]).
    pub fn with<'a, R>(
        &mut self,
        bufs: impl Iterator<Item = &'a mut [f32]>,
        f: impl for<'b> FnOnce(&'b mut [&'b mut [f32]]) -> R,
    ) -> R {
        self.slots.clear();
        for b in bufs {
            // SAFETY: as in `ReadList::with`; the slices are disjoint
            // because they come from distinct `&mut` borrows.
            self.slots
                .push(unsafe { std::mem::transmute::<&'a mut [f32], &'static mut [f32]>(b) });
        }
        // The second cast shortens the elements' lifetime (clippy sees the
        // types without lifetimes as equal).
        #[allow(clippy::unnecessary_cast)]
        let slots = self.slots.as_mut_slice() as *mut [&'static mut [f32]] as *mut [&mut [f32]];
        // SAFETY: same layout; shortening the element lifetime to this call
        // is what lets `f` see the slices without being able to keep one.
        let r = f(unsafe { &mut *slots });
        self.slots.clear();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_hand_out_the_buffers_in_order_and_keep_their_capacity() {
        let bufs = [vec![1.0f32, 2.0], vec![3.0]];
        let mut list = ReadList::default();
        let sum = list.with(bufs.iter().map(Vec::as_slice), |s| {
            s.iter().flat_map(|b| b.iter()).sum::<f32>()
        });
        assert_eq!(sum, 6.0);
        let cap = list.slots.capacity();
        assert!(list.slots.is_empty() && cap >= 2);
        let mut out = vec![vec![0.0f32; 2], vec![0.0; 1]];
        let mut wl = WriteList::default();
        wl.with(out.iter_mut().map(Vec::as_mut_slice), |s| {
            s[0][1] = 5.0;
            s[1][0] = 7.0;
        });
        assert_eq!(out, vec![vec![0.0, 5.0], vec![7.0]]);
    }
}
