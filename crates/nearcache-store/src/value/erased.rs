//! [`ErasedArc`]: an `Arc<T>` of any `T: Send + Sync`, with its type erased, that gives the
//! `Arc<T>` back with a load and a 16-byte comparison — no virtual call.
//!
//! Why it exists: a stored value used to be an `Arc<dyn Any>`, and `Arc::downcast` on every hit
//! read the vtable's alignment to find the data, made the `type_id` virtual call (which returns
//! its 16 bytes through memory) and compared them. Here the data pointer is kept
//! as it is (`Arc::into_raw`) next to a `&'static` [`Descriptor`] of the type, built at compile
//! time, whose `TypeId` the hit compares in place. Still two words, as the fat `Arc<dyn …>` was:
//! every stored entry holds one. Measured under callgrind (docs/benchmarks.md): a `get` hit
//! went from 202 to 186 instructions, the loaders' hits by 17–18.
//!
//! This is the only module of the store with `unsafe` code, and every use of it rests on one
//! invariant, stated on [`ErasedArc`] and kept by its only constructor.

// Every `unsafe` block here says why it is sound; clippy holds the module to that.
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

use std::any::{TypeId, type_name};
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;

/// An `Arc<T>` whose `T` is known only through its [`Descriptor`]. Cloning it clones the
/// `Arc` (one reference count); dropping it drops one reference.
///
/// Invariant: `data` is the pointer `Arc::into_raw` returned for an `Arc<T>` whose reference
/// this value owns, and `descriptor` is `DescriptorOf::<T>::DESCRIPTOR` of that same `T`, with
/// `T: Send + Sync + 'static`. Only [`ErasedArc::new`] builds one (and `clone`, from one that
/// holds it).
pub(crate) struct ErasedArc {
    data: NonNull<()>,
    descriptor: &'static Descriptor,
}

/// What an [`ErasedArc`] knows of its `T`, built at compile time. A type's descriptor may
/// exist in several copies (one per codegen unit that names it), so only its `type_id`
/// identifies the type, never its address.
struct Descriptor {
    /// `TypeId::of::<T>()`: the hit path compares it in place.
    type_id: TypeId,
    /// `type_name::<T>`, for error messages (cold).
    type_name: fn() -> &'static str,
    /// Adds a strong reference to the `Arc<T>` whose data pointer it is given.
    clone: unsafe fn(NonNull<()>),
    /// Drops one strong reference of the `Arc<T>` whose data pointer it is given.
    drop: unsafe fn(NonNull<()>),
}

/// The holder of `T`'s [`Descriptor`] (generic statics do not exist; an associated constant
/// of reference type is promoted to a `'static` value).
struct DescriptorOf<T>(PhantomData<fn() -> T>);

impl<T: Send + Sync + 'static> DescriptorOf<T> {
    const DESCRIPTOR: &'static Descriptor = &Descriptor {
        type_id: TypeId::of::<T>(),
        type_name: type_name::<T>,
        clone: clone_arc::<T>,
        drop: drop_arc::<T>,
    };
}

/// # Safety
///
/// `data` comes from `Arc::<T>::into_raw` of an `Arc<T>` that still has a strong reference.
unsafe fn clone_arc<T>(data: NonNull<()>) {
    // SAFETY: by this function's contract `data` is `Arc::<T>::into_raw` of a live `Arc<T>`
    // (of this very `T`, the descriptor's), which is what `increment_strong_count` requires.
    unsafe { Arc::increment_strong_count(data.as_ptr().cast_const().cast::<T>()) }
}

/// # Safety
///
/// `data` comes from `Arc::<T>::into_raw`, and the caller owns one strong reference of it,
/// which this gives up.
unsafe fn drop_arc<T>(data: NonNull<()>) {
    // SAFETY: by this function's contract `data` is `Arc::<T>::into_raw` of an `Arc<T>` whose
    // reference the caller owns and gives up here: rebuilding that `Arc` and dropping it
    // releases exactly that reference.
    drop(unsafe { Arc::from_raw(data.as_ptr().cast_const().cast::<T>()) });
}

impl ErasedArc {
    /// Erases `value`'s type, keeping its reference.
    pub(crate) fn new<T: Send + Sync + 'static>(value: Arc<T>) -> Self {
        let raw = Arc::into_raw(value).cast::<()>().cast_mut();
        // SAFETY: `Arc::into_raw` never returns null (it points into the `Arc`'s allocation).
        // The pointer keeps its provenance over the whole allocation, counts included, which
        // rebuilding the `Arc` from it needs (a pointer made from a `&T` would not have it).
        let data = unsafe { NonNull::new_unchecked(raw) };
        ErasedArc {
            data,
            descriptor: DescriptorOf::<T>::DESCRIPTOR,
        }
    }

    /// Whether this holds an `Arc<T>`: one load and a 16-byte comparison.
    #[inline(always)]
    pub(crate) fn is<T: 'static>(&self) -> bool {
        self.descriptor.type_id == TypeId::of::<T>()
    }

    /// The `Arc<T>` this holds (a new reference to the very same allocation), or `None` when
    /// it holds another type: the hit path.
    #[inline(always)]
    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        if !self.is::<T>() {
            return None;
        }
        let data = self.data.as_ptr().cast_const().cast::<T>();
        // SAFETY: the `TypeId`s are equal, so by the invariant `data` is `Arc::<T>::into_raw`
        // of this very `T`, and `self` owns a reference to it, alive for this call: adding a
        // reference and rebuilding an `Arc` that owns that new reference is sound, and leaves
        // `self`'s own reference untouched.
        unsafe {
            Arc::increment_strong_count(data);
            Some(Arc::from_raw(data))
        }
    }

    /// The value as a `&T` borrowed from this, or `None` when it holds another type.
    pub(crate) fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        if !self.is::<T>() {
            return None;
        }
        // SAFETY: the `TypeId`s are equal, so by the invariant `data` points to the `T` of an
        // `Arc<T>` that `self` holds a reference to: the `T` is initialised, aligned (it is
        // where `Arc` put it), and lives at least as long as the borrow of `self`. `Arc` hands
        // out only shared references to it, so a shared borrow aliases nothing mutable.
        Some(unsafe { self.data.cast::<T>().as_ref() })
    }

    /// The name of the type this holds.
    pub(crate) fn type_name(&self) -> &'static str {
        (self.descriptor.type_name)()
    }
}

impl Clone for ErasedArc {
    fn clone(&self) -> Self {
        // SAFETY: by the invariant `data` is `Arc::<T>::into_raw` of a live `Arc<T>` (`self`
        // holds a reference) and `descriptor.clone` is `clone_arc::<T>` of that same `T`; the
        // new reference it adds is the one the returned value owns.
        unsafe { (self.descriptor.clone)(self.data) };
        ErasedArc {
            data: self.data,
            descriptor: self.descriptor,
        }
    }
}

impl Drop for ErasedArc {
    fn drop(&mut self) {
        // SAFETY: by the invariant `data` is `Arc::<T>::into_raw` of an `Arc<T>` whose
        // reference `self` owns, and `descriptor.drop` is `drop_arc::<T>` of that same `T`;
        // `self` is never used again, so the reference is given up exactly once.
        unsafe { (self.descriptor.drop)(self.data) }
    }
}

// SAFETY: an `ErasedArc` is an `Arc<T>` with `T: Send + Sync` (the bound of `new`, its only
// constructor), and such an `Arc<T>` is `Send`: it may be dropped (and `T` with it) on
// another thread.
unsafe impl Send for ErasedArc {}

// SAFETY: as for `Send`: `Arc<T>` with `T: Send + Sync` is `Sync`; through `&ErasedArc` one
// can only clone the `Arc` (atomic counts), read `&T` (`T: Sync`) or get an `Arc<T>` (which
// may be sent: `T: Send + Sync`).
unsafe impl Sync for ErasedArc {}

impl fmt::Debug for ErasedArc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErasedArc")
            .field("type", &self.type_name())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(shuttle)))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// `ErasedArc` is `Send + Sync`, checked at compile time; `new`'s bound keeps out what is
    /// not (an `Rc` does not compile: `ErasedArc::new(Arc::new(Rc::new(1)))`).
    const _: () = {
        const fn send_and_sync<S: Send + Sync>() {}
        send_and_sync::<ErasedArc>();
    };

    /// Counts its drops.
    struct Counted(Arc<AtomicUsize>, u64);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn two_words_and_a_niche() {
        assert_eq!(size_of::<ErasedArc>(), 16);
        assert_eq!(size_of::<Option<ErasedArc>>(), 16);
    }

    #[test]
    fn reads_give_back_the_very_same_arc() {
        let value = Arc::new(String::from("v"));
        let erased = ErasedArc::new(Arc::clone(&value));
        let read = erased.get::<String>().unwrap();
        assert!(Arc::ptr_eq(&value, &read));
        assert_eq!(
            Arc::strong_count(&value),
            3,
            "the original, the erased one, the read"
        );
        assert!(std::ptr::eq(
            erased.downcast_ref::<String>().unwrap(),
            &*value
        ));
        assert_eq!(erased.type_name(), "alloc::string::String");
    }

    #[test]
    fn each_value_is_dropped_once_after_its_last_reference() {
        let drops = Arc::new(AtomicUsize::new(0));
        let value = Arc::new(Counted(Arc::clone(&drops), 7));
        let erased = ErasedArc::new(value);
        let clone = erased.clone();
        let read = erased.get::<Counted>().unwrap();
        drop(erased);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            0,
            "a clone and a reader remain"
        );
        drop(clone);
        assert_eq!(drops.load(Ordering::SeqCst), 0, "a reader remains");
        assert_eq!(read.1, 7);
        drop(read);
        assert_eq!(drops.load(Ordering::SeqCst), 1);

        // The other order: the readers go first, the erased value last.
        let value = Arc::new(Counted(Arc::clone(&drops), 8));
        let erased = ErasedArc::new(value);
        let reads: Vec<_> = (0..3).map(|_| erased.get::<Counted>().unwrap()).collect();
        drop(reads);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "the erased value remains");
        drop(erased);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_read_of_another_type_is_none_and_takes_no_reference() {
        let value = Arc::new(5_u32);
        let erased = ErasedArc::new(Arc::clone(&value));
        assert!(erased.get::<u64>().is_none());
        assert!(
            erased.get::<i32>().is_none(),
            "same size and alignment, another type"
        );
        assert!(erased.downcast_ref::<u64>().is_none());
        assert!(!erased.is::<u64>() && erased.is::<u32>());
        assert_eq!(Arc::strong_count(&value), 2, "no reference taken or lost");
    }

    #[test]
    fn zero_sized_values() {
        /// Zero-sized, and counts its drops in a static.
        struct Unit;
        static UNIT_DROPS: AtomicUsize = AtomicUsize::new(0);
        impl Drop for Unit {
            fn drop(&mut self) {
                UNIT_DROPS.fetch_add(1, Ordering::SeqCst);
            }
        }

        let value = Arc::new(Unit);
        let erased = ErasedArc::new(Arc::clone(&value));
        assert!(Arc::ptr_eq(&erased.get::<Unit>().unwrap(), &value));
        assert!(erased.get::<()>().is_none(), "another zero-sized type");
        let unit = ErasedArc::new(Arc::new(()));
        assert!(unit.get::<()>().is_some() && unit.get::<Unit>().is_none());
        drop((value, erased.clone(), unit));
        assert_eq!(UNIT_DROPS.load(Ordering::SeqCst), 0);
        drop(erased);
        assert_eq!(UNIT_DROPS.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn values_aligned_to_64_bytes() {
        #[repr(align(64))]
        struct Aligned([u8; 64]);

        let value = Arc::new(Aligned([9; 64]));
        let erased = ErasedArc::new(Arc::clone(&value));
        let read = erased.get::<Aligned>().unwrap();
        assert!(Arc::ptr_eq(&read, &value));
        assert_eq!(Arc::as_ptr(&read).addr() % 64, 0);
        assert_eq!(read.0, [9; 64]);
        assert_eq!(erased.downcast_ref::<Aligned>().unwrap().0[63], 9);
        drop((read, erased));
        assert_eq!(Arc::strong_count(&value), 1);
    }

    #[test]
    fn a_marker_of_a_type_is_not_that_type() {
        /// What a negative entry holds: a marker naming the type it is a `None` of.
        struct Nothing(TypeId);

        let erased = ErasedArc::new(Arc::new(Nothing(TypeId::of::<u8>())));
        assert!(erased.get::<u8>().is_none());
        assert_eq!(
            erased.downcast_ref::<Nothing>().unwrap().0,
            TypeId::of::<u8>()
        );
    }

    #[test]
    fn threads_clone_read_and_drop_one_value() {
        // Fewer rounds under miri, which runs each thread's steps interleaved and slowly.
        let (rounds, threads, steps) = if cfg!(miri) { (2, 3, 20) } else { (50, 8, 500) };
        for _ in 0..rounds {
            let drops = Arc::new(AtomicUsize::new(0));
            let value = Arc::new(Counted(Arc::clone(&drops), 11));
            let erased = ErasedArc::new(Arc::clone(&value));
            let barrier = Barrier::new(threads);
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    let mine = erased.clone();
                    let (barrier, value) = (&barrier, &value);
                    let erased = &erased;
                    scope.spawn(move || {
                        barrier.wait();
                        let mut kept = Vec::new();
                        for step in 0..steps {
                            let read = erased.get::<Counted>().unwrap();
                            assert!(Arc::ptr_eq(&read, value) && read.1 == 11);
                            if step % 3 == 0 {
                                kept.push(mine.clone());
                            }
                            if step % 7 == 0 {
                                kept.clear();
                            }
                            assert!(mine.get::<u64>().is_none());
                        }
                        // Drops its clones here, on its own thread.
                    });
                }
            });
            assert_eq!(drops.load(Ordering::SeqCst), 0, "two references remain");
            assert_eq!(
                Arc::strong_count(&value),
                2,
                "every thread's reference was given up"
            );
            // The last reference dropped on another thread.
            std::thread::spawn(move || drop(erased)).join().unwrap();
            assert_eq!(drops.load(Ordering::SeqCst), 0);
            drop(value);
            assert_eq!(drops.load(Ordering::SeqCst), 1);
        }
    }
}
