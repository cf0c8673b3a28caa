//! The chat template the CPU worker renders prompts with: chosen at load
//! time (slot setting, else the model's own, else its architecture's
//! default; see [`model_check::template`]) and proved there, by
//! rendering a sample conversation, so an unusable template is a load error
//! that names the fix rather than a failure of every request.

use std::io::Read;
use std::path::Path;

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use model_check::gguf::GgufInfo;
use model_check::template::{self, InUse, Origin, Plan, TemplateError, BUILTIN, MAX_FILE};
use proto::worker::{ExitCode, LoadFailed};

/// The template to render with, and how to describe it.
pub struct Chosen {
    /// What llama.cpp is given.
    pub template: LlamaChatTemplate,
    /// Where it came from and which built-in format it renders.
    pub in_use: InUse,
}

/// Settles on the template for `model` (whose header check gave `info`)
/// under the slot's `setting`.
///
/// # Errors
/// A [`LoadFailed`] naming the problem and the setting that fixes it.
pub fn choose(
    model: &LlamaModel,
    info: &GgufInfo,
    setting: Option<&str>,
) -> Result<Chosen, LoadFailed> {
    let arch = info.architecture.as_deref();
    let default = template::default_for(arch, &info.vocab_markers);
    let plan = template::plan(setting, info.has_chat_template, default, arch)
        .map_err(|e| failed(ExitCode::BadSettings, &e))?;
    match plan {
        Plan::Named { name, origin } => {
            let tmpl = LlamaChatTemplate::new(&name).map_err(|_| {
                failed(
                    ExitCode::BadSettings,
                    &TemplateError::UnknownName { name: name.clone() },
                )
            })?;
            // Proves this llama.cpp knows the name (the list is ours).
            render_probe(model, &tmpl).ok_or_else(|| {
                failed(
                    ExitCode::BadSettings,
                    &TemplateError::UnknownName { name: name.clone() },
                )
            })?;
            Ok(Chosen {
                template: tmpl,
                in_use: InUse {
                    name: Some(name),
                    origin,
                },
            })
        }
        Plan::File(path) => {
            let text = read_file(&path).map_err(|e| failed(ExitCode::BadSettings, &e))?;
            let what = format!("chat template file {}", path.display());
            recognised(
                model,
                &text,
                Origin::ConfigFile(path),
                &what,
                ExitCode::BadSettings,
            )
        }
        Plan::Embedded => {
            let what = "the model file's embedded chat template";
            let tmpl = model.chat_template(None).map_err(|e| LoadFailed {
                exit_code: ExitCode::ModelInvalid.code(),
                message: format!("{what} cannot be read: {e}"),
            })?;
            let text = tmpl.to_string().unwrap_or_default();
            // An embedded template llama.cpp cannot place is the model's
            // problem, but the fix is the slot's chat_template.
            recognised(model, &text, Origin::Embedded, what, ExitCode::ModelInvalid)
        }
    }
}

/// Hands `text` to llama.cpp and names the built-in format it renders as.
fn recognised(
    model: &LlamaModel,
    text: &str,
    origin: Origin,
    what: &str,
    code: ExitCode,
) -> Result<Chosen, LoadFailed> {
    let unrecognised = || {
        failed(
            code,
            &TemplateError::Unrecognised {
                what: what.to_owned(),
            },
        )
    };
    let tmpl = LlamaChatTemplate::new(text).map_err(|_| unrecognised())?;
    let rendered = render_probe(model, &tmpl).ok_or_else(unrecognised)?;
    Ok(Chosen {
        template: tmpl,
        in_use: InUse {
            name: builtin_rendering(model, &rendered),
            origin,
        },
    })
}

/// The first built-in template that renders the probe exactly as given.
fn builtin_rendering(model: &LlamaModel, rendered: &str) -> Option<String> {
    BUILTIN
        .iter()
        .find(|name| {
            LlamaChatTemplate::new(name)
                .ok()
                .and_then(|t| render_probe(model, &t))
                .is_some_and(|r| r == rendered)
        })
        .map(|name| (*name).to_owned())
}

/// Renders a short conversation with every role; `None` when llama.cpp
/// refuses the template (it returns -1 for one it cannot place).
pub fn render_probe(model: &LlamaModel, tmpl: &LlamaChatTemplate) -> Option<String> {
    let chat = [
        ("system", "Be brief."),
        ("user", "Hello."),
        ("assistant", "Hi."),
        ("user", "What is 2+2?"),
    ]
    .into_iter()
    .map(|(role, text)| LlamaChatMessage::new(role.to_owned(), text.to_owned()))
    .collect::<Result<Vec<_>, _>>()
    .ok()?;
    model.apply_chat_template(tmpl, &chat, true).ok()
}

/// Reads a template file, refusing what cannot be one.
fn read_file(path: &Path) -> Result<String, TemplateError> {
    let unreadable = |source| TemplateError::FileUnreadable {
        path: path.to_owned(),
        source,
    };
    let unusable = |problem| TemplateError::FileUnusable {
        path: path.to_owned(),
        problem,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(unusable(
            "is larger than 1 MiB: is it really a chat template?",
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| unusable("is not UTF-8 text"))?;
    if text.trim().is_empty() {
        return Err(unusable("is empty"));
    }
    if text.contains('\0') {
        return Err(unusable("contains a NUL byte"));
    }
    Ok(text)
}

fn failed(code: ExitCode, e: &TemplateError) -> LoadFailed {
    LoadFailed {
        exit_code: code.code(),
        message: e.to_string(),
    }
}
