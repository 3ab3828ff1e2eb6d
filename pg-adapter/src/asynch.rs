// placeholder
pub struct AsyncPgQueue;
