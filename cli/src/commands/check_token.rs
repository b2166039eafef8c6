//! `iam-join check-token FILE...`: every diagnostic of every token, with its severity.

use std::process::ExitCode;

use iam_join::TokenSet;

use crate::Usage;

pub(crate) fn run(files: &[String], deny_warnings: bool) -> Result<ExitCode, Usage> {
    let (mut errors, mut warnings) = (false, false);
    for path in files {
        match TokenSet::load_file(path) {
            Err(e) => {
                let reason = e.detail().strip_prefix(&format!("{path}: ")).unwrap_or(e.detail());
                println!("{path}:0:0: error: {reason}");
                errors = true;
            }
            Ok(set) => {
                set.diagnostics().iter().for_each(|p| println!("{p}"));
                errors |= set.has_errors();
                warnings |= set.has_warnings();
                eprintln!("{path}: {} usable iam token(s)", set.len());
            }
        }
    }
    Ok(if errors {
        ExitCode::from(2)
    } else if warnings && deny_warnings {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
