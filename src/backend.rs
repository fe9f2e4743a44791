//! Choosing where the models run: the GPU through burn-wgpu (WebGPU in the browser, Vulkan or
//! Metal natively), or burn's CPU backend (`flex`).
//!
//! [`BackendChoice::Auto`] takes the GPU when an adapter exists and falls back to the CPU
//! otherwise; [`Backend`] says which one runs, the adapter's name, and why a GPU was not used.
//! burn registers its wgpu runtime once per process, so the first successful GPU setup is kept
//! and shared by every later [`Backend::init`]. In a browser, WebGPU is detected here too
//! (`webgpu_available`), before wgpu is asked, so the JS layer only reports what this module
//! found.

use std::fmt;
use std::str::FromStr;
#[cfg(feature = "webgpu")]
use std::sync::Mutex;

use burn::tensor::Device;

use crate::error::{Error, Result};

/// What the caller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// GPU when there is one, otherwise CPU.
    #[default]
    Auto,
    /// GPU or an error.
    Gpu,
    /// CPU only.
    Cpu,
}

impl FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "gpu" | "wgpu" | "webgpu" | "vulkan" => Ok(BackendChoice::Gpu),
            "cpu" => Ok(BackendChoice::Cpu),
            other => Err(Error::InvalidInput(format!(
                "unknown backend {other:?}: use \"auto\", \"webgpu\" (or \"gpu\") or \"cpu\""
            ))),
        }
    }
}

/// Which backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// burn-wgpu: WebGPU in a browser, Vulkan/Metal/DX12 natively.
    Wgpu,
    /// burn's CPU backend (`flex`).
    Cpu,
}

/// The GPU adapter in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    /// Adapter name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)` or `SwiftShader Device`.
    pub name: String,
    /// Graphics API: `Vulkan`, `BrowserWebGpu`, `Metal`, ...
    pub api: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `Cpu` (a software rasteriser), ...
    pub device_type: String,
}

impl AdapterInfo {
    /// Whether the adapter is a software rasteriser on the CPU (lavapipe natively, SwiftShader
    /// in Chromium): wgpu reports its device type as `Cpu` (in a browser, from
    /// `GPUAdapterInfo.isFallbackAdapter`).
    pub fn is_software(&self) -> bool {
        self.device_type == "Cpu"
    }
}

/// A ready device and a description of it.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The device tensors are created on.
    pub device: Device,
    /// Which backend runs.
    pub kind: BackendKind,
    /// The adapter, when the GPU runs.
    pub adapter: Option<AdapterInfo>,
    /// Why the GPU is not used, when the CPU runs.
    pub fallback_reason: Option<String>,
    /// What the caller asked for: with [`BackendChoice::Auto`] on a GPU, the filter measures
    /// which device runs each batch size faster ([`crate::filter::routing`]).
    pub requested: BackendChoice,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.adapter, &self.fallback_reason) {
            (BackendKind::Wgpu, Some(a), _) => {
                write!(f, "wgpu ({}: {}, {})", a.api, a.name, a.device_type)
            }
            (BackendKind::Wgpu, None, _) => write!(f, "wgpu"),
            (BackendKind::Cpu, _, Some(reason)) => write!(f, "cpu ({reason})"),
            (BackendKind::Cpu, _, None) => write!(f, "cpu"),
        }
    }
}

/// Launches cubecl-wgpu gathers into one command submission (it submits every this many
/// launches, and before any upload or read-back). Its default is 32, which cut a decoded token
/// of the chat engine (154 launches, then an 8-byte read) into 5 submissions; 256 makes it one,
/// and gathers more of burn's op-by-op launches too (the filter's encoder on a GPU). The
/// environment variable `CUBECL_WGPU_MAX_TASKS`, when set, still wins (as cubecl documents).
pub const WGPU_TASKS_PER_SUBMISSION: usize = 256;

/// The launches per submission in effect: `CUBECL_WGPU_MAX_TASKS` when set to a number,
/// otherwise [`WGPU_TASKS_PER_SUBMISSION`].
pub fn wgpu_tasks_per_submission() -> usize {
    std::env::var("CUBECL_WGPU_MAX_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(WGPU_TASKS_PER_SUBMISSION)
}

/// The process-wide GPU setup: burn's wgpu runtime can be registered only once.
#[cfg(feature = "webgpu")]
static GPU: Mutex<Option<(Device, AdapterInfo)>> = Mutex::new(None);

/// The GPU adapter this process set up (natively or in the browser), if it set one up.
pub fn gpu_adapter() -> Option<AdapterInfo> {
    #[cfg(feature = "webgpu")]
    {
        GPU.lock()
            .ok()?
            .as_ref()
            .map(|(_, adapter)| adapter.clone())
    }
    #[cfg(not(feature = "webgpu"))]
    {
        None
    }
}

impl Backend {
    /// The CPU backend (asked for as [`BackendChoice::Cpu`]).
    pub fn cpu(reason: Option<String>) -> Self {
        Backend {
            device: Device::flex(),
            kind: BackendKind::Cpu,
            adapter: None,
            fallback_reason: reason,
            requested: BackendChoice::Cpu,
        }
    }

    /// Sets up the backend `choice` asks for. Works natively and in the browser.
    pub async fn init(choice: BackendChoice) -> Result<Self> {
        if choice == BackendChoice::Cpu {
            return Ok(Self::cpu(Some("CPU requested".into())));
        }
        match gpu().await {
            Ok((device, adapter)) => Ok(Backend {
                device,
                kind: BackendKind::Wgpu,
                adapter: Some(adapter),
                fallback_reason: None,
                requested: choice,
            }),
            Err(reason) if choice == BackendChoice::Auto => Ok(Backend {
                requested: choice,
                ..Self::cpu(Some(reason))
            }),
            Err(reason) => Err(Error::Backend(format!("no usable GPU: {reason}"))),
        }
    }

    /// The backend the chat model runs on: this one, except that `auto` on a software adapter
    /// (see [`AdapterInfo::is_software`]) takes the CPU backend and says why. Measured
    /// (notes/issue-14-gpu.md): the GPU engine decodes 12-14 tokens/s on lavapipe where the
    /// CPU backend decodes 120-140, and a token takes about 4 s on SwiftShader; the CPU path
    /// also applies the safety adapters. A real GPU keeps the chat model; the filter measures
    /// its own choice per batch size instead ([`crate::filter::routing`]).
    pub fn for_chat(&self) -> Backend {
        match &self.adapter {
            Some(a)
                if a.is_software()
                    && self.kind == BackendKind::Wgpu
                    && self.requested == BackendChoice::Auto =>
            {
                Backend {
                    requested: BackendChoice::Auto,
                    ..Self::cpu(Some(format!(
                        "the WebGPU adapter ({}) is a software rasteriser: the CPU backend decodes faster",
                        a.name
                    )))
                }
            }
            _ => self.clone(),
        }
    }

    /// [`Backend::init`] for native callers without an async runtime.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn init_blocking(choice: BackendChoice) -> Result<Self> {
        pollster::block_on(Self::init(choice))
    }
}

/// A build without the `webgpu` feature (the threaded wasm module) has no GPU backend.
#[cfg(not(feature = "webgpu"))]
async fn gpu() -> Result<(Device, AdapterInfo), String> {
    Err("this build has no WebGPU (the threaded module runs on the CPU only)".into())
}

#[cfg(feature = "webgpu")]
async fn gpu() -> Result<(Device, AdapterInfo), String> {
    if let Some(ready) = GPU.lock().map_err(|_| "GPU setup lock poisoned")?.clone() {
        return Ok(ready);
    }
    #[cfg(target_arch = "wasm32")]
    let browser_name = webgpu_available().await?;

    let (device, setup) = match burn::tensor::Device::wgpu_options()
        .tasks_max(wgpu_tasks_per_submission())
        .init_with_setup_async()
        .await
    {
        Ok(ready) => ready,
        Err(e) => return registered_by_another_thread().ok_or_else(|| e.to_string()),
    };
    let info = setup.adapter.get_info();
    #[cfg(target_arch = "wasm32")]
    let info = wgpu_info_with_name(info, browser_name);
    let adapter = AdapterInfo {
        name: info.name,
        api: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
    };
    let ready = (device, adapter);
    *GPU.lock().map_err(|_| "GPU setup lock poisoned")? = Some(ready.clone());
    Ok(ready)
}

/// The setup another thread is storing when this one's registration failed because that
/// thread registered burn's runtime first (natively, two threads setting up at once: tests run
/// in parallel); waits up to 30 s for it. Wasm runs one setup at a time.
#[cfg(feature = "webgpu")]
fn registered_by_another_thread() -> Option<(Device, AdapterInfo)> {
    #[cfg(not(target_arch = "wasm32"))]
    for _ in 0..600 {
        if let Some(ready) = GPU.lock().ok()?.clone() {
            return Some(ready);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}

/// A small fixed computation (matmul, bias, softmax, reduction) used to check that a backend
/// computes what the others do: `softmax(A·B + 0.5)` row by row, then each row's
/// `sum(p²)`, with `A[i][k] = sin(0.37·i + 0.11·k)` (4×8) and `B[k][j] = cos(0.23·k − 0.41·j)`
/// (8×3). Returns the 12 probabilities followed by the 4 sums. Reads back asynchronously, so it
/// works on WebGPU in the browser too.
pub async fn probe_computation(device: &Device) -> Result<Vec<f32>> {
    use burn::tensor::{Tensor, TensorData, activation::softmax};
    let a: Vec<f32> = (0..4)
        .flat_map(|i| (0..8).map(move |k| (0.37 * i as f32 + 0.11 * k as f32).sin()))
        .collect();
    let b: Vec<f32> = (0..8)
        .flat_map(|k| (0..3).map(move |j| (0.23 * k as f32 - 0.41 * j as f32).cos()))
        .collect();
    let a = Tensor::<2>::from_data(TensorData::new(a, [4, 8]), device);
    let b = Tensor::<2>::from_data(TensorData::new(b, [8, 3]), device);
    let p = softmax(a.matmul(b) + 0.5, 1);
    let sums = p.clone().powf_scalar(2.0).sum_dim(1);
    let mut out = read_f32(p).await?;
    out.extend(read_f32(sums).await?);
    Ok(out)
}

/// Reads a tensor back as `f32` values, asynchronously (the only way that works on WebGPU in
/// a browser).
pub async fn read_f32<const D: usize>(t: burn::tensor::Tensor<D>) -> Result<Vec<f32>> {
    let data = t
        .into_data_async()
        .await
        .map_err(|e| Error::Backend(format!("reading a tensor back failed: {e:?}")))?;
    data.try_to_vec::<f32>()
        .map_err(|e| Error::Backend(format!("unexpected tensor data: {e:?}")))
}

/// Checks that WebGPU exists here and gives an adapter, before wgpu is asked for one: without
/// `navigator.gpu`, creating wgpu's instance panics, and a panic kills the module. Returns the
/// adapter's name from `GPUAdapter.info` (wgpu reports an empty name in browsers).
#[cfg(target_arch = "wasm32")]
pub async fn webgpu_available() -> Result<String, String> {
    use js_sys::{Promise, Reflect};
    use wasm_bindgen::{JsCast, JsValue};
    use wasm_bindgen_futures::JsFuture;

    let navigator = Reflect::get(&js_sys::global(), &"navigator".into())
        .map_err(|_| "no navigator object".to_string())?;
    let gpu = Reflect::get(&navigator, &"gpu".into()).unwrap_or(JsValue::UNDEFINED);
    if gpu.is_undefined() || gpu.is_null() {
        return Err("this browser has no WebGPU (navigator.gpu is missing)".into());
    }
    let request = Reflect::get(&gpu, &"requestAdapter".into())
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        .ok_or("navigator.gpu.requestAdapter is not a function")?;
    let promise: Promise = request
        .call0(&gpu)
        .map_err(|e| format!("requestAdapter failed: {e:?}"))?
        .dyn_into()
        .map_err(|_| "requestAdapter did not return a promise".to_string())?;
    let adapter = JsFuture::from(promise)
        .await
        .map_err(|e| format!("requestAdapter failed: {e:?}"))?;
    if adapter.is_null() || adapter.is_undefined() {
        return Err("WebGPU gave no adapter".into());
    }
    let info = Reflect::get(&adapter, &"info".into()).unwrap_or(JsValue::UNDEFINED);
    let field = |k: &str| {
        Reflect::get(&info, &k.into())
            .ok()
            .and_then(|v| v.as_string())
            .filter(|s| !s.is_empty())
    };
    let name: Vec<String> = ["vendor", "architecture", "device", "description"]
        .iter()
        .filter_map(|k| field(k))
        .collect();
    Ok(name.join(" "))
}

/// Browsers hide the adapter name from wgpu; use the one `GPUAdapter.info` gives.
#[cfg(all(target_arch = "wasm32", feature = "webgpu"))]
fn wgpu_info_with_name(
    mut info: burn::tensor::wgpu::wgpu::AdapterInfo,
    browser_name: String,
) -> burn::tensor::wgpu::wgpu::AdapterInfo {
    if info.name.is_empty() {
        info.name = browser_name;
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_choices() {
        assert_eq!(
            "auto".parse::<BackendChoice>().unwrap(),
            BackendChoice::Auto
        );
        assert_eq!(
            "WebGPU".parse::<BackendChoice>().unwrap(),
            BackendChoice::Gpu
        );
        assert_eq!("cpu".parse::<BackendChoice>().unwrap(), BackendChoice::Cpu);
        let err = "tpu".parse::<BackendChoice>().unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("auto"), "{err}");
    }

    /// A GPU backend as `init` would report it, for `for_chat`'s rule.
    fn gpu_backend(device_type: &str, requested: BackendChoice) -> Backend {
        Backend {
            device: Device::flex(),
            kind: BackendKind::Wgpu,
            adapter: Some(AdapterInfo {
                name: "some adapter".into(),
                api: "Vulkan".into(),
                device_type: device_type.into(),
            }),
            fallback_reason: None,
            requested,
        }
    }

    #[test]
    fn auto_runs_the_chat_model_on_the_cpu_only_when_the_adapter_is_software() {
        let chat = gpu_backend("Cpu", BackendChoice::Auto).for_chat();
        assert_eq!(chat.kind, BackendKind::Cpu);
        assert_eq!(chat.requested, BackendChoice::Auto);
        let reason = chat.fallback_reason.unwrap();
        assert!(
            reason.contains("some adapter") && reason.contains("software"),
            "{reason}"
        );
        for (device_type, requested) in [
            ("DiscreteGpu", BackendChoice::Auto),
            ("IntegratedGpu", BackendChoice::Auto),
            ("Other", BackendChoice::Auto),
            ("Cpu", BackendChoice::Gpu),
        ] {
            let chat = gpu_backend(device_type, requested).for_chat();
            assert_eq!(chat.kind, BackendKind::Wgpu, "{device_type} {requested:?}");
            assert!(chat.fallback_reason.is_none());
        }
        let cpu = Backend::cpu(Some("CPU requested".into())).for_chat();
        assert_eq!(cpu.kind, BackendKind::Cpu);
        assert_eq!(cpu.fallback_reason.as_deref(), Some("CPU requested"));
    }
}
