//! The VM lifecycle as a pure state machine: which steps an operation takes from a
//! state, or why it is refused.
//!
//! ```text
//! Described ─stage→ Staged ─load→ Loaded ─start→ Running ⇄ Paused
//!     ↑                ↑  ↖─────────── stop ───────────┘      │
//!  (records)        Stopped ←──────────── stop ───────────────┘
//! Staged/Stopped/Described ─unstage→ Unstaged ─stage→ Staged
//! ```
//!
//! `create` implies `load` implies `stage`; every operation is idempotent (asking for
//! the state a VM is already in does nothing); an impossible one is refused with a hint.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a VM is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Recorded, addresses assigned; nothing on disk yet.
    Described,
    /// Images rebuilt, cloned, integrated; config written.
    Staged,
    /// Domain created, paused.
    Loaded,
    /// Domain running.
    Running,
    /// Domain paused after running.
    Paused,
    /// Domain gone; images kept.
    Stopped,
    /// Local data and addresses released.
    Unstaged,
}

/// What an operator asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Rebuild, clone and integrate the images.
    Stage,
    /// Create the domain paused.
    Load,
    /// Create the domain and run it.
    Create,
    /// Pause a running domain.
    Pause,
    /// Resume a paused domain.
    Unpause,
    /// Shut the domain down.
    Stop,
    /// Release local data and addresses.
    Unstage,
}

/// One transition, as timed and recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Described/Unstaged → Staged.
    Stage,
    /// Staged/Stopped → Loaded.
    Load,
    /// Loaded → Running (the paper's "start").
    Start,
    /// Running → Paused.
    Pause,
    /// Paused → Running.
    Unpause,
    /// Loaded/Running/Paused → Stopped.
    Stop,
    /// Staged/Stopped/Described → Unstaged.
    Unstage,
}

impl Step {
    /// The state after the step.
    pub fn target(self) -> VmState {
        match self {
            Step::Stage => VmState::Staged,
            Step::Load => VmState::Loaded,
            Step::Start | Step::Unpause => VmState::Running,
            Step::Pause => VmState::Paused,
            Step::Stop => VmState::Stopped,
            Step::Unstage => VmState::Unstaged,
        }
    }
}

/// An operation that cannot be done from the VM's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What was asked.
    pub op: Op,
    /// Where the VM is.
    pub state: VmState,
    /// What to do instead.
    pub hint: &'static str,
}

/// The steps `op` takes from `state`: empty if the VM is already there.
pub fn plan(state: VmState, op: Op) -> Result<Vec<Step>, Refusal> {
    use Step::*;
    use VmState as S;
    let refuse = |hint| Err(Refusal { op, state, hint });
    let steps: &[Step] = match (op, state) {
        (Op::Stage, S::Described | S::Unstaged) => &[Stage],
        (Op::Stage, _) => &[],
        (Op::Load, S::Described | S::Unstaged) => &[Stage, Load],
        (Op::Load, S::Staged | S::Stopped) => &[Load],
        (Op::Load, S::Loaded | S::Running | S::Paused) => &[],
        (Op::Create, S::Described | S::Unstaged) => &[Stage, Load, Start],
        (Op::Create, S::Staged | S::Stopped) => &[Load, Start],
        (Op::Create, S::Loaded) => &[Start],
        (Op::Create, S::Running) => &[],
        (Op::Create, S::Paused) => return refuse("use unpause"),
        (Op::Pause, S::Running) => &[Pause],
        (Op::Pause, S::Paused) => &[],
        (Op::Pause, S::Loaded) => {
            return refuse(
                "it is loaded but was never started (already paused); use create to start it",
            )
        }
        (Op::Pause, _) => return refuse("only a running VM can be paused"),
        (Op::Unpause, S::Paused) => &[Unpause],
        (Op::Unpause, S::Running) => &[],
        (Op::Unpause, S::Loaded) => return refuse("it was never started; use create"),
        (Op::Unpause, _) => return refuse("only a paused VM can be unpaused"),
        (Op::Stop, S::Loaded | S::Running | S::Paused) => &[Stop],
        (Op::Stop, _) => &[],
        (Op::Unstage, S::Described | S::Staged | S::Stopped) => &[Unstage],
        (Op::Unstage, S::Unstaged) => &[],
        (Op::Unstage, S::Loaded | S::Running | S::Paused) => {
            return refuse("its domain exists; stop it first")
        }
    };
    Ok(steps.to_vec())
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Described => "described",
            VmState::Staged => "staged",
            VmState::Loaded => "loaded",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
            VmState::Unstaged => "unstaged",
        })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Stage => "stage",
            Op::Load => "load",
            Op::Create => "create",
            Op::Pause => "pause",
            Op::Unpause => "unpause",
            Op::Stop => "stop",
            Op::Unstage => "unstage",
        })
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Stage => "stage",
            Step::Load => "load",
            Step::Start => "start",
            Step::Pause => "pause",
            Step::Unpause => "unpause",
            Step::Stop => "stop",
            Step::Unstage => "unstage",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [VmState; 7] = [
        VmState::Described,
        VmState::Staged,
        VmState::Loaded,
        VmState::Running,
        VmState::Paused,
        VmState::Stopped,
        VmState::Unstaged,
    ];
    const OPS: [Op; 7] =
        [Op::Stage, Op::Load, Op::Create, Op::Pause, Op::Unpause, Op::Stop, Op::Unstage];

    /// Every plan is a walk of legal steps, and doing an operation twice does nothing
    /// the second time.
    #[test]
    fn plans_are_walks_and_idempotent() {
        for state in STATES {
            for op in OPS {
                let Ok(steps) = plan(state, op) else { continue };
                let mut s = state;
                for step in &steps {
                    let from_ok = match step {
                        Step::Stage => matches!(s, VmState::Described | VmState::Unstaged),
                        Step::Load => matches!(s, VmState::Staged | VmState::Stopped),
                        Step::Start => s == VmState::Loaded,
                        Step::Pause => s == VmState::Running,
                        Step::Unpause => s == VmState::Paused,
                        Step::Stop => {
                            matches!(s, VmState::Loaded | VmState::Running | VmState::Paused)
                        }
                        Step::Unstage => {
                            matches!(s, VmState::Described | VmState::Staged | VmState::Stopped)
                        }
                    };
                    assert!(from_ok, "{op} from {state}: {step} from {s}");
                    s = step.target();
                }
                assert_eq!(plan(s, op), Ok(vec![]), "{op} from {state} then again from {s}");
            }
        }
    }

    #[test]
    fn create_implies_load_implies_stage() {
        assert_eq!(
            plan(VmState::Described, Op::Create),
            Ok(vec![Step::Stage, Step::Load, Step::Start])
        );
        assert_eq!(plan(VmState::Described, Op::Load), Ok(vec![Step::Stage, Step::Load]));
    }

    #[test]
    fn impossible_operations_are_refused() {
        let r = plan(VmState::Stopped, Op::Pause).expect_err("must fail");
        assert_eq!((r.op, r.state), (Op::Pause, VmState::Stopped));
        assert!(plan(VmState::Running, Op::Unstage).is_err());
        assert!(plan(VmState::Paused, Op::Create).is_err());
        assert!(plan(VmState::Loaded, Op::Unpause).is_err());
    }
}
