//! The context backward rules emit nodes through: it appends ordinary IR
//! nodes to the training graph, attributed to the forward node whose
//! gradient they compute (same layer path, source and region), and offers
//! the small helpers most rules need (constants, sums over broadcast dims,
//! reshapes).

use super::GradError;
use crate::ir::{Attr, ConstId, ConstTensor, Dim, Graph, Node, Op, TensorType, ValueDef, ValueId};
use crate::passes::rewrite::per_element;
use netc_runtime::DType;

/// Emits backward nodes for one forward node at a time.
pub struct GradCx<'g> {
    /// The training graph being built (forward nodes already in place).
    pub g: &'g mut Graph,
    /// The nodes emitted so far, in order (installed by the caller).
    pub emitted: Vec<Node>,
    /// The forward node whose backward is being emitted.
    like: Option<Node>,
}

impl<'g> GradCx<'g> {
    /// A context that appends to `g`.
    pub fn new(g: &'g mut Graph) -> GradCx<'g> {
        GradCx {
            g,
            emitted: Vec::new(),
            like: None,
        }
    }

    /// Attributes the nodes emitted from now on to `node`.
    pub fn attribute_to(&mut self, node: &Node) {
        self.like = Some(node.clone());
    }

    /// The type of a value.
    pub fn ty(&self, v: ValueId) -> TensorType {
        self.g.ty(v).clone()
    }

    /// An error about the forward node being differentiated, at its
    /// source position.
    pub fn error(&self, msg: impl std::fmt::Display) -> GradError {
        match &self.like {
            Some(n) => GradError {
                message: format!("{}: {msg}", subject(n)),
                span: Some(n.span),
                hint: None,
            },
            None => GradError::new(msg.to_string()),
        }
    }

    /// Appends a node applying `op` to `inputs` with results of types
    /// `outs`; returns the result values.
    pub fn emit(
        &mut self,
        op: Op,
        inputs: Vec<ValueId>,
        outs: Vec<TensorType>,
        flops: Dim,
    ) -> Vec<ValueId> {
        let (path, span, region) = match &self.like {
            Some(n) => (n.path.clone(), n.span, n.region),
            None => (String::new(), self.g.values[0].span, None),
        };
        let outputs: Vec<ValueId> = outs
            .into_iter()
            .map(|t| {
                self.g
                    .add_value(t, ValueDef::Node(crate::ir::NodeId(u32::MAX), 0), span)
            })
            .collect();
        self.emitted.push(Node {
            op,
            inputs,
            outputs: outputs.clone(),
            path,
            span,
            flops,
            region,
            train_only: false,
            fused_into: None,
        });
        outputs
    }

    /// Appends a node with one result of type `ty`.
    pub fn emit1(&mut self, op: Op, inputs: Vec<ValueId>, ty: TensorType, flops: Dim) -> ValueId {
        self.emit(op, inputs, vec![ty], flops)[0]
    }

    /// An elementwise node whose result has the type of `like_value`
    /// (one flop per element).
    pub fn pointwise(&mut self, op: Op, inputs: Vec<ValueId>, like_value: ValueId) -> ValueId {
        let ty = self.ty(like_value);
        let flops = per_element(&ty);
        self.emit1(op, inputs, ty, flops)
    }

    /// A binary elementwise op `name(a, b)` typed like `a`.
    pub fn binary(&mut self, name: &'static str, a: ValueId, b: ValueId) -> ValueId {
        self.pointwise(Op::new(name), vec![a, b], a)
    }

    /// A compile-time f32 scalar.
    pub fn scalar(&mut self, value: f64) -> ValueId {
        self.constant(
            format!("scalar({})", crate::ir::format_float(value)),
            &[],
            vec![value],
        )
    }

    /// A compile-time f32 tensor of known shape.
    pub fn constant(&mut self, desc: String, shape: &[i64], data: Vec<f64>) -> ValueId {
        let ty = TensorType::known(DType::F32, shape);
        let id = ConstId(self.g.consts.len() as u32);
        let span = self.like.as_ref().map_or(self.g.values[0].span, |n| n.span);
        let v = self.g.add_value(ty, ValueDef::Const(id), span);
        self.g.consts.push(ConstTensor {
            desc,
            data,
            value: v,
        });
        v
    }

    /// `x * k` for a compile-time scalar `k`.
    pub fn scale(&mut self, x: ValueId, k: f64) -> ValueId {
        let s = self.scalar(k);
        self.binary("mul", x, s)
    }

    /// `x` reshaped to `shape` (no data movement).
    pub fn reshape(&mut self, x: ValueId, shape: Vec<Dim>) -> ValueId {
        if self.g.ty(x).shape == shape {
            return x;
        }
        let ty = TensorType::new(self.g.ty(x).dtype, shape.clone());
        self.emit1(
            Op::new("reshape").with("shape", Attr::Dims(shape)),
            vec![x],
            ty,
            Dim::known(0),
        )
    }

    /// `x` broadcast to `shape` (numpy rules).
    pub fn expand(&mut self, x: ValueId, shape: Vec<Dim>) -> ValueId {
        if self.g.ty(x).shape == shape {
            return x;
        }
        let ty = TensorType::new(self.g.ty(x).dtype, shape.clone());
        self.emit1(
            Op::new("expand").with("shape", Attr::Dims(shape)),
            vec![x],
            ty,
            Dim::known(0),
        )
    }

    /// The sum of `x` over `dims`, keeping them as size 1 when `keepdim`.
    pub fn sum(&mut self, x: ValueId, dims: &[usize], keepdim: bool) -> ValueId {
        if dims.is_empty() {
            return x;
        }
        let t = self.ty(x);
        let shape = t
            .shape
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match (dims.contains(&i), keepdim) {
                (false, _) => Some(d.clone()),
                (true, true) => Some(Dim::known(1)),
                (true, false) => None,
            })
            .collect();
        let flops = per_element(&t);
        self.emit1(
            Op::new("sum")
                .with("dims", Attr::Ints(dims.iter().map(|&d| d as i64).collect()))
                .with("keepdim", Attr::Bool(keepdim)),
            vec![x],
            TensorType::new(t.dtype, shape),
            flops,
        )
    }

    /// The gradient `dy` (of a broadcast result) reduced to the shape of
    /// operand `target`: summed over the dims broadcasting added or
    /// stretched, then reshaped.
    pub fn unbroadcast(&mut self, dy: ValueId, target: ValueId) -> Result<ValueId, GradError> {
        let want = self.ty(target).shape;
        let have = self.ty(dy).shape;
        if want == have {
            return Ok(dy);
        }
        if want.len() > have.len() {
            return Err(self.error(format!(
                "operand of rank {} is wider than the result's rank {}",
                want.len(),
                have.len()
            )));
        }
        let lead = have.len() - want.len();
        let mut dims: Vec<usize> = (0..lead).collect();
        for (i, d) in want.iter().enumerate() {
            if d.as_known() == Some(1) && have[lead + i].as_known() != Some(1) {
                dims.push(lead + i);
            } else if *d != have[lead + i] {
                return Err(self.error("an operand does not broadcast to the result"));
            }
        }
        let s = self.sum(dy, &dims, true);
        Ok(self.reshape(s, want))
    }
}

/// How errors name a forward node: its op, and its layer path when it has
/// one (the ops of a `train` section have none).
pub(crate) fn subject(n: &Node) -> String {
    if n.path.is_empty() {
        format!("`{}`", n.op.name)
    } else {
        format!("`{}` at {}", n.op.name, n.path)
    }
}
