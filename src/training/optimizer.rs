//! Optimizer updates as ONNX nodes, appended to the training-step graph after the gradients.
//!
//! - sgd (Keras form): `velocity' = momentum * velocity - lr * g`, `p' = p + velocity'`;
//! - adam (Keras form, with the bias correction folded into the step size):
//!   `m' = b1 m + (1 - b1) g`, `v' = b2 v + (1 - b2) g²`,
//!   `p' = p - lr * sqrt(1 - b2^t) / (1 - b1^t) * m' / (sqrt(v') + epsilon)`, `t` = `step`.

use crate::onnx::builder::Dim;

use super::autodiff::Tape;
use super::job::Optimizer;

/// One updated tensor: (value, input name it replaces, dims).
pub type Update = (String, String, Vec<Dim>);

/// Emits the update of every parameter; `states[i]` holds the dims and the state inputs of
/// parameter `i`. Returns the new parameters and states, named after the inputs they replace.
pub fn emit(
    tape: &mut Tape,
    optimizer: &Optimizer,
    lr: &str,
    step: &str,
    params: &[String],
    grads: &[String],
    states: &[(Vec<Dim>, Vec<String>)],
) -> Vec<Update> {
    let mut out = Vec::new();
    match *optimizer {
        Optimizer::Sgd { momentum } => {
            let mom = tape.scalar(momentum);
            for ((p, g), (dims, state)) in params.iter().zip(grads).zip(states) {
                let gr = tape.graph();
                let kept = gr.node("Mul", &[&state[0], &mom], vec![]);
                let scaled = gr.node("Mul", &[g, lr], vec![]);
                let velocity = gr.node("Sub", &[&kept, &scaled], vec![]);
                let next = gr.node("Add", &[p, &velocity], vec![]);
                out.push((next, p.clone(), dims.clone()));
                out.push((velocity, state[0].clone(), dims.clone()));
            }
        }
        Optimizer::Adam {
            beta_1,
            beta_2,
            epsilon,
        } => {
            let b1 = tape.scalar(beta_1);
            let b2 = tape.scalar(beta_2);
            let c1 = tape.scalar(1.0 - beta_1);
            let c2 = tape.scalar(1.0 - beta_2);
            let one = tape.scalar(1.0);
            let eps = tape.scalar(epsilon);
            let gr = tape.graph();
            let b1t = gr.node("Pow", &[&b1, step], vec![]);
            let b2t = gr.node("Pow", &[&b2, step], vec![]);
            let bc1 = gr.node("Sub", &[&one, &b1t], vec![]);
            let bc2 = gr.node("Sub", &[&one, &b2t], vec![]);
            let root = gr.node("Sqrt", &[&bc2], vec![]);
            let scaled = gr.node("Mul", &[lr, &root], vec![]);
            let alpha = gr.node("Div", &[&scaled, &bc1], vec![]);
            for ((p, g), (dims, state)) in params.iter().zip(grads).zip(states) {
                let m = &state[0];
                let v = &state[1];
                let m_keep = gr.node("Mul", &[m, &b1], vec![]);
                let m_new = gr.node("Mul", &[g, &c1], vec![]);
                let m1 = gr.node("Add", &[&m_keep, &m_new], vec![]);
                let g2 = gr.node("Mul", &[g, g], vec![]);
                let v_keep = gr.node("Mul", &[v, &b2], vec![]);
                let v_new = gr.node("Mul", &[&g2, &c2], vec![]);
                let v1 = gr.node("Add", &[&v_keep, &v_new], vec![]);
                let root = gr.node("Sqrt", &[&v1], vec![]);
                let denom = gr.node("Add", &[&root, &eps], vec![]);
                let ratio = gr.node("Div", &[&m1, &denom], vec![]);
                let delta = gr.node("Mul", &[&ratio, &alpha], vec![]);
                let next = gr.node("Sub", &[p, &delta], vec![]);
                out.push((next, p.clone(), dims.clone()));
                out.push((m1, m.clone(), dims.clone()));
                out.push((v1, v.clone(), dims.clone()));
            }
        }
    }
    out
}
