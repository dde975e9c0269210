//! What `shardgate check` prints: the `Display` of [`RoutingTable`] — per
//! listener its entries in precedence order (conditions → backends with up to
//! 8 endpoints each, `h2` after one reached over HTTP/2 for every request,
//! `tls=HOSTNAME` after one a BackendTLSPolicy covers;
//! policies, timeout, `route rule`), then priorities and warnings — and of
//! the compiled conditions it is made of.

use std::fmt;

use crate::duration::format_duration;

use super::matcher::{CompiledMatch, HostPattern, NamedCond, PathCond, ValueCond};
use super::{RoutingTable, RuleAction};

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Exact(e) => f.write_str(e),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

impl fmt::Display for PathCond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathCond::Exact(v) => write!(f, "Exact {v}"),
            PathCond::Prefix(v) => write!(f, "PathPrefix {v}"),
            PathCond::Regex(_, v) | PathCond::Service(_, v) => write!(f, "RegularExpression {v}"),
        }
    }
}

impl fmt::Display for NamedCond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            ValueCond::Exact(v) => write!(f, "{}={v}", self.name),
            ValueCond::Regex(_, v) => write!(f, "{}~{v}", self.name),
        }
    }
}

impl fmt::Display for CompiledMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path)?;
        if let Some(m) = self.method {
            write!(f, " + method {}", m.as_str())?;
        }
        for h in &self.headers {
            write!(f, " + header {}", h.cond)?;
        }
        for q in &self.query {
            write!(f, " + query {q}")?;
        }
        Ok(())
    }
}

impl fmt::Display for RoutingTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (li, l) in self.listeners.iter().enumerate() {
            write!(
                f,
                "listener {} {} {} :{}",
                l.gateway, l.name, l.protocol, l.port
            )?;
            if let Some(h) = &self.listener_hosts[li] {
                write!(f, " host {h}")?;
            }
            writeln!(f, "{}", if l.served { "" } else { " (not served)" })?;
            if self.entries[li].is_empty() {
                writeln!(f, "  (no routes)")?;
            }
            for (n, e) in self.entries[li].iter().enumerate() {
                let route = &self.routes[e.route];
                let rule = &route.rules[e.rule];
                write!(f, "  {:>2}. ", n + 1)?;
                if e.host != HostPattern::Any {
                    write!(f, "host {} + ", e.host)?;
                }
                write!(f, "{} →", rule.matches[e.matcher])?;
                if rule.backends.is_empty() {
                    write!(f, " (no backends)")?;
                }
                for (bi, b) in rule.backends.iter().enumerate() {
                    if bi > 0 {
                        write!(f, ",")?;
                    }
                    write!(f, " {}", b.name)?;
                    if let Some(p) = rule.backend_ports[bi] {
                        write!(f, ":{p}")?;
                    }
                    write!(f, " (w {}) [", b.weight)?;
                    if b.endpoints.is_empty() {
                        write!(f, "no endpoints")?;
                    }
                    for (i, &ep) in b.endpoints.iter().take(8).enumerate() {
                        if i > 0 {
                            write!(f, ", ")?;
                        }
                        let e = &self.endpoints[ep];
                        write!(f, "{}", e.addr)?;
                        if e.h2 {
                            write!(f, " h2")?;
                        }
                        if let Some(t) = &e.tls {
                            write!(f, " tls={}", t.hostname)?;
                        }
                    }
                    if b.endpoints.len() > 8 {
                        write!(f, ", … {} more", b.endpoints.len() - 8)?;
                    }
                    write!(f, "]")?;
                }
                if let Some(p) = &rule.policy {
                    write!(f, " policy={p}")?;
                }
                if let Some(b) = &rule.batching {
                    write!(f, " batching={b}")?;
                    if let Some(t) = &rule.batching_default {
                        write!(f, " (default via {t})")?;
                    }
                }
                if let Some((sp, via)) = &rule.security {
                    write!(f, " security={sp} (via {via})")?;
                }
                if let RuleAction::FilterNotFound { filter } = &rule.action {
                    write!(f, " → 500 (filter {filter} not found)")?;
                }
                if let Some(t) = rule.request_timeout {
                    write!(f, " timeout={}", format_duration(t))?;
                }
                writeln!(f, "  ({} rule {})", route.key, e.rule)?;
            }
        }
        if !self.priorities.is_empty() {
            let (objectives, models) = self.priorities();
            writeln!(f, "priorities:")?;
            for (name, e) in objectives {
                writeln!(
                    f,
                    "  objective {name}: {} (InferenceObjective {}, pool {})",
                    e.priority, e.source, e.pool
                )?;
            }
            for (name, e) in models {
                writeln!(
                    f,
                    "  model {name}: {} (InferenceModel {}, pool {})",
                    e.priority, e.source, e.pool
                )?;
            }
        }
        let splits = self.splits();
        if !splits.is_empty() {
            writeln!(f, "model splits:")?;
            for (model, e) in splits {
                write!(f, "  model {model} (pool {}):", e.pool)?;
                match e.rollout.and_then(|i| self.rollouts().get(i)) {
                    Some(r) => write!(
                        f,
                        " rollout {} → {} in steps {:?}% every {}",
                        r.stable,
                        r.canary,
                        r.steps,
                        format_duration(r.step_duration)
                    )?,
                    None => {
                        for t in &e.targets {
                            write!(f, " {}={}", t.model, t.weight)?;
                        }
                    }
                }
                writeln!(f, "  ({})", e.source)?;
            }
        }
        if !self.warnings.is_empty() {
            writeln!(f, "warnings:")?;
            for w in &self.warnings {
                writeln!(f, "  - {w}")?;
            }
        }
        Ok(())
    }
}
