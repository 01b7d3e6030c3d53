//! `kubeboot bundle --out DIR` / `--check DIR`: the core gathers and verifies; this draws the
//! progress bars (indicatif lives only in the binary) and maps the outcome to an exit code.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::app::{Exit, Failure};
use crate::bundle::collect::{self, BundleEvent};
use crate::cli::{BundleArgs, Cli};
use crate::facts::Facts;
use crate::inventory;

/// Runs `kubeboot bundle`.
pub(crate) async fn bundle(cli: &Cli, args: &BundleArgs) -> Result<Exit, Failure> {
    if let Some(dir) = &args.check {
        let (manifest, damaged) = collect::check(dir).map_err(|e| Failure::Other(e.to_string()))?;
        for d in &damaged {
            eprintln!("DAMAGED {}: {}", d.path, d.reason);
        }
        if damaged.is_empty() {
            println!("bundle {}: {} files, all intact", dir.display(), manifest.items.len());
            return Ok(Exit::Ok);
        }
        eprintln!(
            "bundle {}: {} of {} files damaged — copy them again (or run kubeboot bundle --out on it again)",
            dir.display(),
            damaged.len(),
            manifest.items.len()
        );
        return Ok(Exit::BadInput);
    }
    let Some(out) = &args.out else {
        return Err(Failure::Other("give --out DIR or --check DIR".into()));
    };
    let inv = inventory::load(&cli.inventory)?;
    // The nodes are not asked for their facts: the bundle is built away from them (x86_64 assumed).
    let wanted = collect::wanted(&inv, &Facts::assumed());
    let bars = Bars::new(std::io::stderr().is_terminal());
    let report = |e: BundleEvent| bars.show(e);
    match collect::collect(&wanted, out, &report).await {
        Ok(manifest) => {
            println!(
                "bundle {}: {} files, manifest {}",
                out.display(),
                manifest.items.len(),
                collect::MANIFEST
            );
            Ok(Exit::Ok)
        }
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("run the same command again: finished files are kept, an interrupted one continues");
            Ok(Exit::NodesFailed)
        }
    }
}

/// One bar per download on a terminal; one line per file otherwise.
struct Bars {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn new(terminal: bool) -> Bars {
        Bars {
            multi: terminal.then(MultiProgress::new),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn show(&self, e: BundleEvent) {
        let Ok(mut bars) = self.bars.lock() else { return };
        match (e, &self.multi) {
            (BundleEvent::Started { name, from, total }, Some(multi)) => {
                let bar = multi.add(ProgressBar::new(total.unwrap_or(0)));
                if let Ok(style) =
                    ProgressStyle::with_template("{msg:12} {bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
                {
                    bar.set_style(style);
                }
                bar.set_message(name.clone());
                bar.set_position(from);
                bars.insert(name, bar);
            }
            (BundleEvent::Progress { name, done }, Some(_)) => {
                if let Some(bar) = bars.get(&name) {
                    bar.set_position(done);
                }
            }
            (BundleEvent::Finished { name, size }, _) => {
                if let Some(bar) = bars.remove(&name) {
                    bar.finish();
                }
                eprintln!("ok {name} ({size} bytes, sha256 checked)");
            }
            (BundleEvent::Present { name }, _) => eprintln!("present {name} (sha256 checked, not downloaded again)"),
            (BundleEvent::Started { name, from, .. }, None) if from > 0 => {
                eprintln!("resuming {name} at byte {from}")
            }
            _ => {}
        }
    }
}
