//! Controller register profiles: how a controller model lays out its status block and how
//! commands are written. A new controller model is a new TOML file in `config/profiles/`,
//! never new code. Profiles are validated at load; every error names the file and the key.
//!
//! The same profile drives both ends: the Modbus link decodes readings with it, and the
//! simulator encodes its gates' physics into registers with it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_actors::gate::{Capabilities, HwOp, HwState, Observation, RawCounter};
use serde::Deserialize;

/// Modbus allows at most 125 registers in one read.
pub const MAX_BLOCK_LEN: u16 = 125;

/// The profiles shipped with Gatehouse, embedded so that the binary runs from any directory.
const BUILTIN: &[(&str, &str)] = &[
    (
        "generic",
        include_str!("../../config/profiles/generic.toml"),
    ),
    (
        "ha-cover",
        include_str!("../../config/profiles/ha-cover.toml"),
    ),
    (
        "came-zlb30",
        include_str!("../../config/profiles/came-zlb30.toml"),
    ),
];

/// A profile that failed to load: the file, the key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("profile {file}: {key}: {message}")]
pub struct ProfileError {
    pub file: String,
    /// A dotted path such as `commands.open.pulse_ms`, or `(file)` for the file as a whole.
    pub key: String,
    pub message: String,
}

/// Which register table the status block is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    Holding,
    Input,
}

/// Which word of a 32-bit counter comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    LowFirst,
    HighFirst,
}

/// The file as written. `deny_unknown_fields` everywhere: a typo is an error, not a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_poll_interval_ms")]
    poll_interval_ms: u64,
    #[serde(default = "default_fast_poll_interval_ms")]
    fast_poll_interval_ms: u64,
    #[serde(default = "default_request_timeout_ms")]
    request_timeout_ms: u64,
    #[serde(default)]
    inter_frame_delay_ms: u64,
    #[serde(default = "default_true")]
    entrapment_protection: bool,
    #[serde(default)]
    write_echo: WriteEcho,
    #[serde(default = "default_timeouts_before_down")]
    timeouts_before_down: u32,
    status: StatusSpec,
    position: Option<PositionSpec>,
    obstruction: Option<BitSpec>,
    fault_code: Option<RegisterSpec>,
    cycles: Option<CyclesSpec>,
    commands: CommandsSpec,
}

/// What a controller's answer to a single write must say for the write to count as confirmed.
///
/// The Modbus specification has the answer echo the request, but real controllers differ:
/// some clear a command register the moment they take the command and answer with the
/// register's content (0), some answer with a status. A reply that comes back well framed,
/// for the same transaction, unit and function, already says the controller took the
/// request; what it carries beyond that is the controller's own business.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteEcho {
    /// The answer names the register or coil written; its value may be anything. The
    /// default: it is what Home Assistant and Node-RED accept, and a field engineer wants a
    /// command to work on a controller that echoes its register's content.
    #[default]
    Address,
    /// The answer repeats the request exactly (address and value), for controllers known to
    /// echo faithfully, where anything else means the write did not land as sent.
    Exact,
}

/// Request timeouts in a row that take a link down when a profile does not say: one lost
/// reply is retried, a controller that stays silent is down within three request timeouts.
pub const DEFAULT_TIMEOUTS_BEFORE_DOWN: u32 = 3;

fn default_timeouts_before_down() -> u32 {
    DEFAULT_TIMEOUTS_BEFORE_DOWN
}

fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_fast_poll_interval_ms() -> u64 {
    100
}
fn default_request_timeout_ms() -> u64 {
    1000
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusSpec {
    #[serde(default = "default_table")]
    table: Table,
    register: u16,
    values: StatusValues,
}

fn default_table() -> Table {
    Table::Holding
}

/// Status register values per state. A state may have several values (CAME's 18 "partly
/// open" and 19 "stopped" both mean stopped); values not listed decode to `unknown`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusValues {
    closed: Vec<u16>,
    open: Vec<u16>,
    opening: Vec<u16>,
    closing: Vec<u16>,
    #[serde(default)]
    stopped: Vec<u16>,
    #[serde(default)]
    fault: Vec<u16>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct PositionSpec {
    register: u16,
    /// The raw value that means fully open (100 for a percentage, 1000 for per mille).
    #[serde(default = "default_position_max")]
    max: u16,
}

fn default_position_max() -> u16 {
    100
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct BitSpec {
    register: u16,
    bit: u8,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterSpec {
    register: u16,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct CyclesSpec {
    register: u16,
    /// 1 (16-bit, wraps at 65,535) or 2 (32-bit).
    words: u8,
    #[serde(default = "default_word_order")]
    word_order: WordOrder,
}

fn default_word_order() -> WordOrder {
    WordOrder::LowFirst
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandsSpec {
    open: WriteSpec,
    close: WriteSpec,
    stop: WriteSpec,
    reset: Option<WriteSpec>,
    warn: Option<WriteSpec>,
}

/// How one command is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WriteSpec {
    /// Write `value` to holding register `register` (function 6).
    Register { register: u16, value: u16 },
    /// Set coil `coil` on (function 5), and off again after `pulse_ms`.
    Coil { coil: u16, pulse_ms: u64 },
}

/// A validated profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The file stem: what a fleet file names (`profile = "came-zlb30"`).
    pub id: String,
    pub name: String,
    pub description: String,
    pub poll_interval: Duration,
    pub fast_poll_interval: Duration,
    pub request_timeout: Duration,
    pub inter_frame_delay: Duration,
    pub table: Table,
    /// First register of the status block, and its length: one read per poll.
    pub block_start: u16,
    pub block_len: u16,
    /// What confirms a write.
    pub write_echo: WriteEcho,
    /// Request timeouts in a row that take the link down.
    pub timeouts_before_down: u32,
    entrapment_protection: bool,
    status: StatusSpec,
    position: Option<PositionSpec>,
    obstruction: Option<BitSpec>,
    fault_code: Option<RegisterSpec>,
    cycles: Option<CyclesSpec>,
    commands: CommandsSpec,
}

impl Profile {
    /// Parses and validates one profile. `file` names it in errors.
    pub fn parse(id: &str, file: &str, text: &str) -> Result<Profile, ProfileError> {
        let err = |key: &str, message: String| ProfileError {
            file: file.to_string(),
            key: key.to_string(),
            message,
        };
        let raw: ProfileFile = crate::toml_text::parse(text).map_err(|e| err(&e.key, e.message))?;

        if raw.name.trim().is_empty() {
            return Err(err("name", "must not be empty".into()));
        }
        if !(1..=10).contains(&raw.timeouts_before_down) {
            return Err(err(
                "timeouts_before_down",
                format!("must be between 1 and 10, got {}", raw.timeouts_before_down),
            ));
        }
        for (key, v, min) in [
            ("poll_interval_ms", raw.poll_interval_ms, 10),
            ("fast_poll_interval_ms", raw.fast_poll_interval_ms, 10),
            ("request_timeout_ms", raw.request_timeout_ms, 10),
        ] {
            if !(min..=600_000).contains(&v) {
                return Err(err(
                    key,
                    format!("must be between {min} and 600000, got {v}"),
                ));
            }
        }
        if raw.fast_poll_interval_ms > raw.poll_interval_ms {
            return Err(err(
                "fast_poll_interval_ms",
                "must not be longer than poll_interval_ms".into(),
            ));
        }
        if raw.inter_frame_delay_ms > 10_000 {
            return Err(err("inter_frame_delay_ms", "must be at most 10000".into()));
        }

        // Status values: every motion state named, no value claimed by two states.
        let v = &raw.status.values;
        let mut seen: BTreeMap<u16, &str> = BTreeMap::new();
        for (state, values) in [
            ("closed", &v.closed),
            ("open", &v.open),
            ("opening", &v.opening),
            ("closing", &v.closing),
            ("stopped", &v.stopped),
            ("fault", &v.fault),
        ] {
            let required = matches!(state, "closed" | "open" | "opening" | "closing");
            if required && values.is_empty() {
                return Err(err(
                    &format!("status.values.{state}"),
                    "must list at least one value".into(),
                ));
            }
            for value in values {
                if let Some(other) = seen.insert(*value, state) {
                    return Err(err(
                        &format!("status.values.{state}"),
                        format!("value {value} is already used by status.values.{other}"),
                    ));
                }
            }
        }

        if let Some(p) = raw.position
            && p.max == 0
        {
            return Err(err("position.max", "must be greater than 0".into()));
        }
        if let Some(b) = raw.obstruction
            && b.bit > 15
        {
            return Err(err(
                "obstruction.bit",
                format!("must be 0..=15, got {}", b.bit),
            ));
        }
        if let Some(c) = raw.cycles
            && !(1..=2).contains(&c.words)
        {
            return Err(err(
                "cycles.words",
                format!("must be 1 or 2, got {}", c.words),
            ));
        }

        for (key, spec) in [
            ("commands.open", Some(&raw.commands.open)),
            ("commands.close", Some(&raw.commands.close)),
            ("commands.stop", Some(&raw.commands.stop)),
            ("commands.reset", raw.commands.reset.as_ref()),
            ("commands.warn", raw.commands.warn.as_ref()),
        ] {
            if let Some(WriteSpec::Coil { pulse_ms, .. }) = spec
                && !(1..=60_000).contains(pulse_ms)
            {
                return Err(err(
                    &format!("{key}.pulse_ms"),
                    format!("must be between 1 and 60000, got {pulse_ms}"),
                ));
            }
        }
        let writes = raw.commands.all();
        for (i, (op_a, a)) in writes.iter().enumerate() {
            for (op_b, b) in &writes[i + 1..] {
                let clash = match (a, b) {
                    (WriteSpec::Coil { coil: x, .. }, WriteSpec::Coil { coil: y, .. }) => x == y,
                    (
                        WriteSpec::Register {
                            register: r,
                            value: x,
                        },
                        WriteSpec::Register {
                            register: s,
                            value: y,
                        },
                    ) => r == s && x == y,
                    _ => false,
                };
                if clash {
                    return Err(err(
                        &format!("commands.{}", op_b.as_str()),
                        format!("writes the same thing as commands.{}", op_a.as_str()),
                    ));
                }
            }
        }

        // The status block: every status register, read at once. No register may carry
        // two fields: a map that says so cannot mean it.
        let mut fields: Vec<(&str, u16)> = vec![("status.register", raw.status.register)];
        fields.extend(raw.position.map(|p| ("position.register", p.register)));
        fields.extend(
            raw.obstruction
                .map(|b| ("obstruction.register", b.register)),
        );
        fields.extend(raw.fault_code.map(|f| ("fault_code.register", f.register)));
        if let Some(c) = raw.cycles {
            fields.push(("cycles.register", c.register));
            if c.words == 2 {
                let Some(next) = c.register.checked_add(1) else {
                    return Err(err(
                        "cycles.register",
                        "a 2-word counter cannot start at 65535".into(),
                    ));
                };
                fields.push(("cycles.register", next));
            }
        }
        for (i, (key, register)) in fields.iter().enumerate() {
            if let Some((other, _)) = fields[..i].iter().find(|(_, r)| r == register) {
                return Err(err(
                    key,
                    format!("register {register} is already {other}; one register, one field"),
                ));
            }
        }
        let regs: Vec<u16> = fields.iter().map(|(_, r)| *r).collect();
        let start = regs.iter().copied().min().unwrap_or(raw.status.register);
        let end = regs.iter().copied().max().unwrap_or(raw.status.register);
        let len = end - start + 1;
        if len > MAX_BLOCK_LEN {
            return Err(err(
                "status.register",
                format!(
                    "status registers span {start}..={end} ({len} registers); one read takes at most {MAX_BLOCK_LEN}"
                ),
            ));
        }
        // A command written into the holding registers the status block reads would be read
        // back as status: a map mistake, not a controller.
        if raw.status.table == Table::Holding {
            for (op, spec) in raw.commands.all() {
                if let WriteSpec::Register { register, .. } = spec
                    && (start..=end).contains(&register)
                {
                    return Err(err(
                        &format!("commands.{}.register", op.as_str()),
                        format!(
                            "register {register} is inside the status block {start}..={end} it would be read back from"
                        ),
                    ));
                }
            }
        }

        Ok(Profile {
            id: id.to_string(),
            name: raw.name,
            description: raw.description,
            poll_interval: Duration::from_millis(raw.poll_interval_ms),
            fast_poll_interval: Duration::from_millis(raw.fast_poll_interval_ms),
            request_timeout: Duration::from_millis(raw.request_timeout_ms),
            inter_frame_delay: Duration::from_millis(raw.inter_frame_delay_ms),
            table: raw.status.table,
            block_start: start,
            block_len: len,
            write_echo: raw.write_echo,
            timeouts_before_down: raw.timeouts_before_down,
            entrapment_protection: raw.entrapment_protection,
            status: raw.status,
            position: raw.position,
            obstruction: raw.obstruction,
            fault_code: raw.fault_code,
            cycles: raw.cycles,
            commands: raw.commands,
        })
    }

    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            reset: self.commands.reset.is_some(),
            warning_output: self.commands.warn.is_some(),
            entrapment_protection: self.entrapment_protection,
        }
    }

    /// How `op` is written, if the profile can write it.
    pub fn write_spec(&self, op: HwOp) -> Option<WriteSpec> {
        match op {
            HwOp::Open => Some(self.commands.open),
            HwOp::Close => Some(self.commands.close),
            HwOp::Stop => Some(self.commands.stop),
            HwOp::Reset => self.commands.reset,
            HwOp::Warn => self.commands.warn,
        }
    }

    /// Which command a register write means (for the simulator).
    pub fn op_for_register(&self, register: u16, value: u16) -> Option<HwOp> {
        self.commands
            .all()
            .into_iter()
            .find_map(|(op, spec)| match spec {
                WriteSpec::Register {
                    register: r,
                    value: v,
                } if r == register && v == value => Some(op),
                _ => None,
            })
    }

    /// Which command a coil belongs to (for the simulator).
    pub fn op_for_coil(&self, coil: u16) -> Option<HwOp> {
        self.commands
            .all()
            .into_iter()
            .find_map(|(op, spec)| match spec {
                WriteSpec::Coil { coil: c, .. } if c == coil => Some(op),
                _ => None,
            })
    }

    /// Whether `register` is one the profile writes commands to (for the simulator).
    pub fn is_command_register(&self, register: u16) -> bool {
        self.commands
            .all()
            .into_iter()
            .any(|(_, s)| matches!(s, WriteSpec::Register { register: r, .. } if r == register))
    }

    /// Decodes a status block read from `block_start` (`block.len() == block_len`).
    pub fn decode(&self, block: &[u16]) -> Result<Observation, String> {
        if block.len() != usize::from(self.block_len) {
            return Err(format!(
                "expected {} registers, got {}",
                self.block_len,
                block.len()
            ));
        }
        let at = |register: u16| block[usize::from(register - self.block_start)];
        let raw = at(self.status.register);
        let v = &self.status.values;
        let state = [
            (&v.closed, HwState::Closed),
            (&v.open, HwState::Open),
            (&v.opening, HwState::Opening),
            (&v.closing, HwState::Closing),
            (&v.stopped, HwState::Stopped),
            (&v.fault, HwState::Fault),
        ]
        .into_iter()
        .find_map(|(values, state)| values.contains(&raw).then_some(state))
        .unwrap_or(HwState::Unknown);
        let position = self.position.map(|p| {
            let raw = u32::from(at(p.register).min(p.max));
            // Rounded to the nearest whole percent.
            ((raw * 100 + u32::from(p.max) / 2) / u32::from(p.max)) as u8
        });
        let obstructed = self
            .obstruction
            .is_some_and(|b| at(b.register) & (1 << b.bit) != 0);
        let fault_code = self
            .fault_code
            .map(|f| at(f.register))
            .filter(|code| *code != 0);
        let cycles = self.cycles.map(|c| {
            if c.words == 1 {
                RawCounter {
                    value: u32::from(at(c.register)),
                    bits: 16,
                }
            } else {
                let (first, second) = (at(c.register), at(c.register + 1));
                let (lo, hi) = match c.word_order {
                    WordOrder::LowFirst => (first, second),
                    WordOrder::HighFirst => (second, first),
                };
                RawCounter {
                    value: u32::from(hi) << 16 | u32::from(lo),
                    bits: 32,
                }
            }
        });
        Ok(Observation {
            state,
            position,
            obstructed,
            fault_code,
            cycles,
        })
    }

    /// Encodes what a gate shows into its status block (the inverse of [`Profile::decode`],
    /// for the simulator). States without a value of their own fall back sensibly: a
    /// profile without `stopped` reports a stopped gate as opening's neighbour `open`.
    pub fn encode(&self, obs: &Observation) -> Vec<u16> {
        let mut block = vec![0u16; usize::from(self.block_len)];
        let start = self.block_start;
        let mut put = |register: u16, value: u16| block[usize::from(register - start)] = value;
        let v = &self.status.values;
        let first = |values: &Vec<u16>| values.first().copied();
        let status = match obs.state {
            HwState::Closed => first(&v.closed),
            HwState::Open => first(&v.open),
            HwState::Opening => first(&v.opening),
            HwState::Closing => first(&v.closing),
            HwState::Stopped => first(&v.stopped).or(first(&v.open)),
            HwState::Fault => first(&v.fault).or(first(&v.stopped)).or(first(&v.open)),
            HwState::Unknown => None,
        };
        // An unnamed value for unknown: one past the largest named value.
        let unknown = [
            &v.closed, &v.open, &v.opening, &v.closing, &v.stopped, &v.fault,
        ]
        .iter()
        .flat_map(|vs| vs.iter().copied())
        .max()
        .map_or(0xFFFF, |m| m.wrapping_add(1));
        put(self.status.register, status.unwrap_or(unknown));
        if let (Some(p), Some(pos)) = (self.position, obs.position) {
            put(
                p.register,
                ((u32::from(pos.min(100)) * u32::from(p.max) + 50) / 100) as u16,
            );
        }
        if let Some(b) = self.obstruction
            && obs.obstructed
        {
            let i = usize::from(b.register - start);
            block[i] |= 1 << b.bit;
        }
        if let (Some(f), Some(code)) = (self.fault_code, obs.fault_code) {
            let i = usize::from(f.register - start);
            block[i] = code;
        }
        if let (Some(c), Some(counter)) = (self.cycles, obs.cycles) {
            let i = usize::from(c.register - start);
            if c.words == 1 {
                block[i] = counter.value as u16;
            } else {
                let (lo, hi) = (counter.value as u16, (counter.value >> 16) as u16);
                let (a, b) = match c.word_order {
                    WordOrder::LowFirst => (lo, hi),
                    WordOrder::HighFirst => (hi, lo),
                };
                block[i] = a;
                block[i + 1] = b;
            }
        }
        block
    }

    /// The width of the cycle counter in bits, if the profile has one.
    pub fn cycle_bits(&self) -> Option<u8> {
        self.cycles.map(|c| if c.words == 1 { 16 } else { 32 })
    }
}

impl CommandsSpec {
    fn all(&self) -> Vec<(HwOp, WriteSpec)> {
        let mut v = vec![
            (HwOp::Open, self.open),
            (HwOp::Close, self.close),
            (HwOp::Stop, self.stop),
        ];
        v.extend(self.reset.map(|s| (HwOp::Reset, s)));
        v.extend(self.warn.map(|s| (HwOp::Warn, s)));
        v
    }
}

/// The profiles a process knows, by id.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    profiles: BTreeMap<String, Arc<Profile>>,
}

/// The validator of the fleet configuration names profiles by id.
impl gatehouse_actors::fleet_config::ProfileNames for ProfileSet {
    fn has(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    fn names(&self) -> Vec<String> {
        self.ids().map(str::to_string).collect()
    }
}

impl ProfileSet {
    /// The profiles shipped in the binary.
    pub fn builtin() -> Result<ProfileSet, ProfileError> {
        let mut set = ProfileSet::default();
        for (id, text) in BUILTIN {
            let p = Profile::parse(id, &format!("config/profiles/{id}.toml"), text)?;
            set.profiles.insert(id.to_string(), Arc::new(p));
        }
        Ok(set)
    }

    /// Adds (or overrides) every `*.toml` in `dir`, named by file stem.
    pub fn load_dir(&mut self, dir: &Path) -> Result<(), ProfileError> {
        let io = |key: &str, e: std::io::Error| ProfileError {
            file: dir.display().to_string(),
            key: key.to_string(),
            message: e.to_string(),
        };
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| io("(directory)", e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            let file = path.display().to_string();
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            if gatehouse_actors::ids::validate_slug(stem).is_err() {
                return Err(ProfileError {
                    file,
                    key: "(file name)".into(),
                    message:
                        "a profile's file stem is its id and must be a slug ([a-z0-9][a-z0-9-]*)"
                            .into(),
                });
            }
            let text = std::fs::read_to_string(&path).map_err(|e| ProfileError {
                file: file.clone(),
                key: "(file)".into(),
                message: e.to_string(),
            })?;
            let p = Profile::parse(stem, &file, &text)?;
            self.profiles.insert(stem.to_string(), Arc::new(p));
        }
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Profile>> {
        self.profiles.get(id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    pub fn insert(&mut self, profile: Profile) {
        self.profiles.insert(profile.id.clone(), Arc::new(profile));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small valid profile; each validation test breaks exactly one thing in it.
    const BASE: &str = r#"
name = "test board"

[status]
register = 10
values = { closed = [0], open = [1], opening = [2], closing = [3], stopped = [4], fault = [5] }

[position]
register = 11

[cycles]
register = 12
words = 2

[commands]
open = { kind = "register", register = 20, value = 1 }
close = { kind = "register", register = 20, value = 2 }
stop = { kind = "coil", coil = 3, pulse_ms = 250 }
"#;

    fn parse_err(text: &str) -> ProfileError {
        match Profile::parse("t", "profiles/t.toml", text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    fn builtin(id: &str) -> Arc<Profile> {
        ProfileSet::builtin().unwrap().get(id).unwrap().clone()
    }

    #[test]
    fn base_profile_is_valid() {
        let p = Profile::parse("t", "profiles/t.toml", BASE).unwrap();
        assert_eq!((p.block_start, p.block_len), (10, 4));
        assert_eq!(
            p.write_spec(HwOp::Stop),
            Some(WriteSpec::Coil {
                coil: 3,
                pulse_ms: 250
            })
        );
        assert_eq!(p.write_spec(HwOp::Reset), None);
    }

    #[test]
    fn builtin_set_loads() {
        let set = ProfileSet::builtin().unwrap();
        let ids: Vec<_> = set.ids().collect();
        assert_eq!(ids, ["came-zlb30", "generic", "ha-cover"]);
        let came = set.get("came-zlb30").unwrap();
        assert_eq!((came.block_start, came.block_len), (100, 6));
        assert_eq!(came.table, Table::Holding);
        assert_eq!(came.request_timeout, Duration::from_millis(800));
        let ha = set.get("ha-cover").unwrap();
        assert_eq!((ha.block_start, ha.block_len), (1, 1));
        assert_eq!(ha.write_spec(HwOp::Warn), None);
        let generic = set.get("generic").unwrap();
        assert!(generic.capabilities().reset && generic.capabilities().warning_output);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse_err(&BASE.replace("register = 11", "register = 11\ncolour = 3"));
        assert_eq!(e.file, "profiles/t.toml");
        assert_eq!(e.key, "position.colour", "{e}");
        assert!(e.message.contains("colour"), "{e}");

        let e = parse_err(&format!("polling_ms = 5\n{BASE}"));
        assert_eq!(e.key, "polling_ms", "{e}");
    }

    #[test]
    fn missing_open_command_is_named() {
        let text = BASE.replace(
            "open = { kind = \"register\", register = 20, value = 1 }\n",
            "",
        );
        let e = parse_err(&text);
        assert_eq!(e.file, "profiles/t.toml");
        assert_eq!(e.key, "commands.open", "{e}");

        let e = parse_err(&BASE.replace("name = \"test board\"", ""));
        assert_eq!(e.key, "name", "{e}");
    }

    #[test]
    fn duplicate_status_value_is_named() {
        let e = parse_err(&BASE.replace("stopped = [4]", "stopped = [4, 1]"));
        assert_eq!(e.file, "profiles/t.toml");
        assert_eq!(e.key, "status.values.stopped", "{e}");
        assert!(e.message.contains("status.values.open"), "{e}");
    }

    #[test]
    fn bad_cycle_word_count_is_named() {
        for words in ["0", "3"] {
            let e = parse_err(&BASE.replace("words = 2", &format!("words = {words}")));
            assert_eq!(e.key, "cycles.words", "{e}");
            assert!(e.message.contains(words), "{e}");
        }
    }

    #[test]
    fn block_longer_than_one_read_is_refused() {
        // 10..=135 is 126 registers; 10..=134 (125) is still fine.
        let e = parse_err(&BASE.replace("register = 11", "register = 135"));
        assert_eq!(e.key, "status.register", "{e}");
        assert!(e.message.contains("126"), "{e}");
        // (with the command register moved out of the now wider block)
        let wide = BASE
            .replace("register = 11", "register = 134")
            .replace("register = 20", "register = 200");
        let p = Profile::parse("t", "t", &wide).unwrap();
        assert_eq!(p.block_len, MAX_BLOCK_LEN);
    }

    /// The worked example of docs/profiles.md stays a valid profile.
    #[test]
    fn the_documented_example_profile_is_valid() {
        let text = include_str!("../../docs/examples/acme-sb4.toml");
        let p = Profile::parse("acme-sb4", "docs/examples/acme-sb4.toml", text).unwrap();
        assert_eq!((p.block_start, p.block_len), (0, 5));
        assert_eq!(p.write_echo, WriteEcho::Address);
        assert!(p.capabilities().reset && p.capabilities().warning_output);
        // Status 3, position 500 of 1000, the photo-eye bit, no fault, 7 cycles.
        let o = p.decode(&[3, 500, 0b1000, 0, 7]).unwrap();
        assert_eq!(o.state, HwState::Open);
        assert_eq!(o.position, Some(50));
        assert!(o.obstructed);
    }

    #[test]
    fn a_register_carrying_two_fields_is_refused() {
        // The fault code on the position's register.
        let e = parse_err(&BASE.replace("[commands]", "[fault_code]\nregister = 11\n\n[commands]"));
        assert_eq!(e.key, "fault_code.register", "{e}");
        assert!(e.message.contains("position.register"), "{e}");
    }

    #[test]
    fn a_command_register_inside_the_status_block_is_refused() {
        let e = parse_err(&BASE.replace(
            "open = { kind = \"register\", register = 20, value = 1 }",
            "open = { kind = \"register\", register = 11, value = 1 }",
        ));
        assert_eq!(e.key, "commands.open.register", "{e}");
        // In the input table the same address is another register.
        let text = BASE
            .replace(
                "open = { kind = \"register\", register = 20, value = 1 }",
                "open = { kind = \"register\", register = 11, value = 1 }",
            )
            .replace("register = 10\n", "table = \"input\"\nregister = 10\n");
        Profile::parse("t", "t", &text).unwrap();
    }

    #[test]
    fn zero_coil_pulse_is_named() {
        let e = parse_err(&BASE.replace("pulse_ms = 250", "pulse_ms = 0"));
        assert_eq!(e.file, "profiles/t.toml");
        assert_eq!(e.key, "commands.stop.pulse_ms", "{e}");
    }

    #[test]
    fn load_dir_refuses_a_stem_that_is_not_a_slug() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("Came_ZLB30.toml");
        std::fs::write(&bad, BASE).unwrap();
        let mut set = ProfileSet::default();
        let e = set.load_dir(dir.path()).unwrap_err();
        assert_eq!(e.file, bad.display().to_string());
        assert_eq!(e.key, "(file name)");
    }

    #[test]
    fn load_dir_names_the_file_of_a_broken_profile_and_loads_good_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("my-board.toml"), BASE).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a profile").unwrap();
        let mut set = ProfileSet::builtin().unwrap();
        set.load_dir(dir.path()).unwrap();
        assert_eq!(set.get("my-board").unwrap().name, "test board");
        assert!(set.get("generic").is_some());

        let broken = dir.path().join("zz-broken.toml");
        std::fs::write(&broken, BASE.replace("words = 2", "words = 5")).unwrap();
        let e = set.load_dir(dir.path()).unwrap_err();
        assert_eq!(e.file, broken.display().to_string());
        assert_eq!(e.key, "cycles.words");
    }

    /// The states `p` has a status value of its own for (`unknown` always: an unnamed value).
    fn expressible(p: &Profile) -> Vec<HwState> {
        let v = &p.status.values;
        let mut states = vec![
            HwState::Closed,
            HwState::Opening,
            HwState::Open,
            HwState::Closing,
            HwState::Unknown,
        ];
        if !v.stopped.is_empty() {
            states.push(HwState::Stopped);
        }
        if !v.fault.is_empty() {
            states.push(HwState::Fault);
        }
        states
    }

    #[test]
    fn decode_inverts_encode_for_every_builtin_profile() {
        let set = ProfileSet::builtin().unwrap();
        for id in ["generic", "ha-cover", "came-zlb30"] {
            let p = set.get(id).unwrap();
            let states = expressible(p);
            assert!(states.len() >= 5, "{id}");
            for state in states {
                for (position, obstructed, fault, counter) in [
                    (0u8, false, 0u16, 0u32),
                    (37, true, 9, 0x0001_5678),
                    (100, false, 0xFFFF, 0xFFFF_FFFF),
                ] {
                    let counter = match p.cycle_bits() {
                        Some(16) => Some(RawCounter {
                            value: counter & 0xFFFF,
                            bits: 16,
                        }),
                        Some(bits) => Some(RawCounter {
                            value: counter,
                            bits,
                        }),
                        None => None,
                    };
                    let obs = Observation {
                        state,
                        position: p.position.map(|_| position),
                        obstructed: obstructed && p.obstruction.is_some(),
                        fault_code: p.fault_code.and((fault != 0).then_some(fault)),
                        cycles: counter,
                    };
                    let block = p.encode(&obs);
                    assert_eq!(block.len(), usize::from(p.block_len), "{id}");
                    assert_eq!(p.decode(&block).unwrap(), obs, "{id} {state:?}");
                }
            }
        }
    }

    #[test]
    fn decode_refuses_a_block_of_the_wrong_length() {
        let p = builtin("came-zlb30");
        assert!(p.decode(&[17, 0, 0, 0, 0]).is_err());
        assert!(p.decode(&[17, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn came_stopped_codes_and_low_word_first_counter() {
        let p = builtin("came-zlb30");
        for code in [18, 19] {
            let obs = p.decode(&[code, 40, 0, 0, 0, 0]).unwrap();
            assert_eq!(obs.state, HwState::Stopped, "status {code}");
            assert_eq!(obs.position, Some(40));
        }
        let obs = p.decode(&[16, 100, 0b1, 0, 0x5678, 0x0001]).unwrap();
        assert_eq!(obs.state, HwState::Open);
        assert!(obs.obstructed);
        assert_eq!(obs.fault_code, None);
        assert_eq!(
            obs.cycles,
            Some(RawCounter {
                value: 0x0001_5678,
                bits: 32
            })
        );
        assert_eq!(
            p.decode(&[99, 0, 0, 3, 0, 0]).unwrap().state,
            HwState::Unknown
        );
        assert_eq!(p.decode(&[48, 0, 0, 3, 0, 0]).unwrap().fault_code, Some(3));
        // Encoding a stopped gate picks the first listed value.
        let block = p.encode(&Observation::state_only(HwState::Stopped));
        assert_eq!(block[0], 18);
    }

    #[test]
    fn sixteen_bit_counter_and_high_word_first() {
        let text = BASE.replace("words = 2", "words = 1");
        let p = Profile::parse("t", "t", &text).unwrap();
        assert_eq!(p.cycle_bits(), Some(16));
        assert_eq!(p.block_len, 3);
        let obs = p.decode(&[0, 0, 0xFFFF]).unwrap();
        assert_eq!(
            obs.cycles,
            Some(RawCounter {
                value: 65_535,
                bits: 16
            })
        );

        let text = BASE.replace("words = 2", "words = 2\nword_order = \"high_first\"");
        let p = Profile::parse("t", "t", &text).unwrap();
        assert_eq!(p.cycle_bits(), Some(32));
        let obs = p.decode(&[0, 0, 0x0001, 0x5678]).unwrap();
        assert_eq!(
            obs.cycles,
            Some(RawCounter {
                value: 0x0001_5678,
                bits: 32
            })
        );
    }

    #[test]
    fn position_scales_from_the_raw_maximum() {
        let text = BASE.replace("register = 11", "register = 11\nmax = 1000");
        let p = Profile::parse("t", "t", &text).unwrap();
        assert_eq!(p.decode(&[1, 500, 0, 0]).unwrap().position, Some(50));
        assert_eq!(p.decode(&[1, 1200, 0, 0]).unwrap().position, Some(100));
        assert_eq!(
            p.encode(&Observation {
                position: Some(25),
                ..Observation::state_only(HwState::Open)
            })[1],
            250
        );
    }
}
