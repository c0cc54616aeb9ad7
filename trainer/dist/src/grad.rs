//! Assigning a tensor's gradient slot (`.grad`), which tch does not expose. ZeRO needs it twice:
//! to give a rank's optimiser the gradient shard produced by a reduce-scatter (not by autograd),
//! and to free full gradients once they are reduced (stage 2).

use tch::Tensor;

use crate::error::DistError;
use crate::ffi;

/// Sets `tensor.grad` to `grad` (sharing its storage), or clears it with `None` so that the next
/// backward allocates a fresh gradient. `grad` must match `tensor`'s shape, dtype and device.
pub fn set_grad(tensor: &Tensor, grad: Option<&Tensor>) -> Result<(), DistError> {
    if let Some(g) = grad {
        if g.size() != tensor.size() || g.kind() != tensor.kind() || g.device() != tensor.device() {
            return Err(DistError::invalid(
                "set_grad",
                format!(
                    "gradient {:?} {:?} on {:?} does not fit a tensor {:?} {:?} on {:?}",
                    g.size(),
                    g.kind(),
                    g.device(),
                    tensor.size(),
                    tensor.kind(),
                    tensor.device()
                ),
            ));
        }
    }
    let mut err = std::ptr::null_mut();
    let grad_ptr = grad.map_or(std::ptr::null_mut(), |g| g.as_ptr() as *mut _);
    // SAFETY: both pointers are live at::Tensor handles owned by tch for the duration of the
    // call (or null for `grad`); the shim copies the handle (a refcount), it keeps no pointer.
    let status = unsafe { ffi::lf_dist_set_grad(tensor.as_ptr() as *mut _, grad_ptr, &mut err) };
    if status == ffi::STATUS_OK {
        Ok(())
    } else {
        // SAFETY: err was set by the shim.
        Err(DistError::invalid("set_grad", unsafe {
            ffi::take_error(err)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn sets_and_clears_the_gradient_slot() {
        let p = Tensor::zeros([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!(!p.grad().defined());
        let g = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        set_grad(&p, Some(&g)).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&p.grad()).unwrap(),
            vec![1.0, 2.0, 3.0]
        );
        // Autograd accumulates into the assigned gradient.
        (&p * 2.0).sum(Kind::Float).backward();
        assert_eq!(
            Vec::<f32>::try_from(&p.grad()).unwrap(),
            vec![3.0, 4.0, 5.0]
        );
        set_grad(&p, None).unwrap();
        assert!(!p.grad().defined());
        assert!(set_grad(&p, Some(&Tensor::zeros([2], (Kind::Float, Device::Cpu)))).is_err());
    }
}
