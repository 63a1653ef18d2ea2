//! Which runtimes serve a node, and the [`scenarios!`](crate::scenarios)
//! macro that runs each scenario once per runtime.

use std::time::{Duration, Instant};

use crate::SCENARIO_LIMIT;

/// Which runtime crate serves a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Tokio,
    #[cfg(feature = "smol")]
    Smol,
}

impl Runtime {
    /// Every runtime this build tests.
    pub const ALL: &'static [Runtime] = &[
        Runtime::Tokio,
        #[cfg(feature = "smol")]
        Runtime::Smol,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Tokio => "tokio",
            #[cfg(feature = "smol")]
            Runtime::Smol => "smol",
        }
    }
}

/// Expands each named scenario `fn name(rt: Runtime)` into a module `name`
/// holding one `#[test]` per runtime: `name::tokio` and (feature `smol`)
/// `name::smol`. Each runs under [`run_scenario`]'s time limit.
#[macro_export]
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn tokio() {
                $crate::run_scenario(
                    concat!(stringify!($name), "::tokio"),
                    $crate::Runtime::Tokio,
                    super::$name,
                );
            }

            #[cfg(feature = "smol")]
            #[test]
            fn smol() {
                $crate::run_scenario(
                    concat!(stringify!($name), "::smol"),
                    $crate::Runtime::Smol,
                    super::$name,
                );
            }
        }
    )*};
}

/// Runs one scenario on a thread of its own and fails the test if it panics
/// or outlives [`SCENARIO_LIMIT`]. (A scenario that overruns is left behind;
/// the processes it started die with the test process, see [`spawn_child`](crate::spawn_child).)
pub fn run_scenario(name: &str, rt: Runtime, scenario: fn(Runtime)) {
    let started = Instant::now();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || scenario(rt))
        .expect("spawn scenario thread");
    while !thread.is_finished() {
        // A scenario that had to wait for `cargo build` of a binary (a
        // cold target directory) is not charged for it.
        let built = Duration::from_millis(
            crate::binary::BUILD_MILLIS.load(std::sync::atomic::Ordering::Relaxed),
        );
        if started.elapsed() > SCENARIO_LIMIT + built {
            panic!("{name}: still running after {SCENARIO_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
    eprintln!("{name}: passed in {:.1?}", started.elapsed());
}
